"""Cache policies side by side: bytes per sample and per-sample training step time.

`separate` (no cache: English pass + Chinese UNet pass with backward), `recompute` (cached latent +
English states; one no-grad UNet pass per step), `store` (all layers' queries and targets given),
`store-sampled 64` (64 positions per layer), and the encoder-only forward+backward+step as the
floor. `store, empty rows` is `store` with every row turned into the empty prompt (its targets
recomputed from the cached queries): the cost of the CFG pairing, which training pays on
`empty_prompt_fraction` (10%) of the rows. On the tiny preset, an SD-1.5-shaped UNet (random weights) with a
768-wide BERT, an SD-2.1-shaped UNet (96x96 latents, 1024-wide context) with the BERT projected to 1024, and
an SDXL-shaped UNet (128x128 latents, 2048-wide context, 70 cross-attention layers) with the BERT projected to
2048. An SDXL cache also holds the pooled embedding (1280) and time ids per caption: counted in the row. SDXL's
real Chinese side is its two CLIP towers (817M parameters), which do not fit beside the fp32 UNet on a 24 GB
machine: here the 110M BERT stands in for them, so the SDXL step times compare policies (the UNet side), and
train_step.py measures the towers themselves.

    python bench/cache.py [--skip-sd15] [--skip-sd2] [--skip-sdxl] [--reps N] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from types import SimpleNamespace

import torch
from train_step import (
    BERT_768,
    QUICK_BERT,
    QUICK_SDXL_UNET,
    QUICK_UNET,
    SD15_UNET,
    SD21_UNET,
    SDXL_UNET,
    _time,
)
from transformers import BertConfig, BertModel

from iap.cache.budget import projected_bytes_per_sample
from iap.cache.info import CacheConfig
from iap.models.chinese import ChineseEncoder
from iap.models.projection import with_projection
from iap.objective import EmptyPrompt, FrozenBatch, Teacher, make_objective, placeholder_added_cond
from iap.training.loop import make_optimizer


def _sampled(q: dict, o: dict, positions: int, g: torch.Generator) -> tuple[dict, dict]:
    qs, os_ = {}, {}
    for name in q:
        pos = torch.stack([torch.randperm(q[name].shape[1], generator=g)[:positions] for _ in range(len(q[name]))])
        qs[name] = torch.gather(q[name], 1, pos[..., None].expand(-1, -1, q[name].shape[-1]))
        os_[name] = torch.gather(o[name], 1, pos[..., None].expand(-1, -1, o[name].shape[-1]))
    return qs, os_


def measure(base, encoder: ChineseEncoder, batch_size: int, reps: int,
            separate: bool = True) -> dict[str, tuple[float, float]]:
    """policy -> (bytes per sample with 1 draw in fp16, seconds per sample per step); `separate` can be skipped
    (it backpropagates through the UNet)."""
    teacher = Teacher(base)
    unet = base.unet
    size, dim = unet.config.sample_size, unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    batch = FrozenBatch(zh_ids=torch.randint(0, encoder.model.config.vocab_size, (batch_size, 77), generator=g),
                        en_states=torch.randn(batch_size, 77, dim, generator=g),
                        latents=torch.randn(batch_size, 4, size, size, generator=g),
                        noise=torch.randn(batch_size, 4, size, size, generator=g),
                        timesteps=torch.randint(0, 1000, (batch_size,), generator=g),
                        added_cond=placeholder_added_cond(unet, batch_size))
    q, o, _ = teacher.english_pass(batch)
    q16 = {n: v.half().float() for n, v in q.items()}  # as read back from an fp16 cache
    o16 = {n: v.half().float() for n, v in o.items()}
    sq, so = _sampled(q16, o16, 64, g)
    optimizer = make_optimizer(encoder.parameters(), lr=1e-5, weight_decay=0.01)

    def step(objective, b):
        def run():
            objective(encoder(b.zh_ids), b).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def with_empty_rows(objective, b):
        pooled = b.added_cond["text_embeds"][0] if b.added_cond else None  # SDXL pairs "" with its pooled embedding
        empty = EmptyPrompt(zh_ids=b.zh_ids[0], en_states=b.en_states[0], layers=teacher.layers, en_pooled=pooled)
        mask = torch.ones(batch_size, dtype=torch.bool)
        return lambda: step(objective, empty.apply(b, mask.nonzero().flatten().tolist()))()

    def floor():
        encoder(batch.zh_ids).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    pivot_given = make_objective("pivot", None, layers=teacher.layers)
    cases = {
        "separate (no cache)": ("recompute", step(make_objective("separate", teacher), batch)),
        "recompute": ("recompute", step(make_objective("pivot", teacher), batch)),
        "store": ("store", step(pivot_given, FrozenBatch(**{**vars(batch), "queries": q16, "targets": o16}))),
        "store, empty rows": ("store", with_empty_rows(pivot_given, FrozenBatch(**{**vars(batch), "queries": q16,
                                                                                     "targets": o16}))),
        "store-sampled 64": ("store-sampled", step(pivot_given, FrozenBatch(**{**vars(batch), "queries": sq,
                                                                                "targets": so}))),
        "encoder only (floor)": (None, floor),
    }
    out = {}
    if not separate:
        cases["separate (no cache)"] = ("recompute", None)
    for name, (policy, fn) in cases.items():
        nbytes = projected_bytes_per_sample(base, CacheConfig(policy=policy, draws=1))["total"] if policy else 0
        if name.startswith("separate"):
            nbytes = 0  # reads images and captions, caches nothing
        out[name] = (nbytes, _time(fn, reps) / batch_size if fn else float("nan"))
    return out


def _real_base(unet_config: dict, bert: dict = BERT_768):
    """A real UNet config (random weights) and a 768-wide BERT, projected when the UNet is wider."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    dim = int(unet.config.cross_attention_dim)
    base = SimpleNamespace(unet=unet, noise_scheduler=scheduler, max_length=77, cross_attention_dim=dim,
                           device=torch.device("cpu"))
    model = BertModel(BertConfig(**bert), add_pooling_layer=False)
    if dim != model.config.hidden_size:
        model = with_projection(model, dim)
    return base, ChineseEncoder(model, SimpleNamespace(pad_token_id=0, model_max_length=77), 77)


def _tiny_base():
    from iap.models import load_base, load_chinese_encoder
    from iap.presets.tiny import write_tiny
    with tempfile.TemporaryDirectory() as d:
        write_tiny(d)
        base = load_base(f"{d}/base")
        return base, load_chinese_encoder(f"{d}/zh_encoder", base.cross_attention_dim)


def report(model: str, r: dict[str, tuple[float, float]]) -> None:
    """One model's table, printed as soon as it is measured (a later model that runs out of memory loses
    nothing)."""
    import resource
    sep, floor = r["separate (no cache)"][1], r["encoder only (floor)"][1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n{model}: per sample, CPU {torch.get_num_threads()} threads, 1 draw, fp16 cache; peak RSS so far "
          f"{rss:.1f} GB")
    print(f"  {'policy':22} {'cache bytes':>14} {'step time':>12} {'vs separate':>12} {'vs floor':>9}")
    for name, (nbytes, t) in r.items():
        print(f"  {name:22} {nbytes:14,} {t * 1e3:10.1f}ms {sep / t:11.1f}x {t / floor:8.2f}x")
    store, empty = r["store"][1], r["store, empty rows"][1]
    print(f"  empty-prompt pairing at 10% of rows: +{10 * (empty - store) / store:.1f}% on a store step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-sd2", action="store_true")
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every row at toy widths, in seconds (the test suite)")
    args = parser.parse_args()
    if args.quick:
        report("tiny preset (batch 32)", measure(*_tiny_base(), batch_size=32, reps=1))
        report("SD-shaped, toy widths", measure(*_real_base(QUICK_UNET, QUICK_BERT), batch_size=2, reps=1))
        report("SDXL-shaped, toy widths", measure(*_real_base(QUICK_SDXL_UNET, QUICK_BERT), batch_size=2, reps=1))
        return
    report("tiny preset (batch 32)", measure(*_tiny_base(), batch_size=32, reps=args.reps * 5))
    if not args.skip_sd15:
        report("SD-1.5 shapes (batch 1)", measure(*_real_base(SD15_UNET), batch_size=1, reps=args.reps))
    if not args.skip_sd2:
        report("SD-2.1 shapes (batch 1)", measure(*_real_base(SD21_UNET), batch_size=1, reps=args.reps))
    if not args.skip_sdxl:
        # separate backpropagates through SDXL's UNet in fp32: more than a 24 GB machine holds (OOM-killed)
        report("SDXL shapes (batch 1)", measure(*_real_base(SDXL_UNET), batch_size=1, reps=max(1, args.reps // 3),
                                                 separate=False))


if __name__ == "__main__":
    main()
