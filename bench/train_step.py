"""Per-sample training step time: `separate` vs `pivot` with given queries, side by side.

Models: the tiny preset; an SD-1.5-shaped UNet (random weights from the real config: blocks
320/640/1280/1280, 16 cross-attention layers, 64x64 latents, 77x768 text) with a 768-wide, 12-layer BERT as
the Chinese encoder; and an SD-2.1-shaped UNet (stabilityai/stable-diffusion-2-1's config: 96x96 latents,
linear projections, 77x1024 text) with the same BERT through its learned projection to 1024 (as
hfl/chinese-roberta-wwm-ext on SD 2.x); and an SDXL-shaped UNet (stabilityai/stable-diffusion-xl-base-1.0's
config: 128x128 latents, 70 cross-attention layers, a 77x2048 context, the pooled 1280 embedding and time ids
in its added time embedding) with its real Chinese side: SDXL's two CLIP towers (CLIP-L 768 and OpenCLIP bigG
1280, 817M parameters with a 21128-token Chinese vocabulary), trained with the pooled term. Training them
in fp32 with AdamW holds 13 GB beside the 10 GB fp32 UNet, so this row does what a `store` cache run does: the
English pass first, then only the cross-attention layers stay. A step = encoder forward + loss + backward +
(fused) AdamW step, as in iap.training.loop.

    python bench/train_step.py [--skip-sd15] [--skip-sd2] [--skip-sdxl] [--reps N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from iap.models.chinese import ChineseEncoder
from iap.models.projection import with_projection
from iap.models.xl import DualTower
from iap.objective import FrozenBatch, Teacher, make_objective, placeholder_added_cond
from iap.training.loop import make_optimizer

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD21_UNET = {**SD15_UNET, "sample_size": 96, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
             "use_linear_projection": True, "upcast_attention": True}
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# stabilityai/stable-diffusion-xl-base-1.0's text_encoder and text_encoder_2 configs, with the Chinese vocabulary
SDXL_TOWERS = (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    hidden_act="quick_gelu", projection_dim=768),
               dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    hidden_act="gelu", projection_dim=1280))
BERT_768 = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512)
# --quick: the same code paths at toy widths (seconds), so the suite runs every bench and none rots
QUICK_UNET = {**SD15_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1,
              "cross_attention_dim": 64}
QUICK_SDXL_UNET = {**SDXL_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64), "layers_per_block": 1,
                   "attention_head_dim": (2, 4, 4), "transformer_layers_per_block": (1, 1, 2), "cross_attention_dim": 64,
                   "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 32 + 6 * 8}
QUICK_TOWERS = (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     hidden_act="quick_gelu", projection_dim=32),
                dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     hidden_act="gelu", projection_dim=32))
QUICK_BERT = dict(vocab_size=21128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=512)


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(unet, encoder: ChineseEncoder, batch_size: int, reps: int, separate: bool = True) -> dict[str, float]:
    """Seconds per sample: `separate` (unless skipped: it backpropagates through the UNet), pivot with given
    queries, the encoder-only floor, and the English pass alone (what a `recompute` cache pays per step)."""
    base = SimpleNamespace(unet=unet, noise_scheduler=DDPMScheduler(beta_schedule="scaled_linear",
                                                                    beta_start=0.00085, beta_end=0.012))
    teacher = Teacher(base)
    size, dim = unet.config.sample_size, unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    vocab = encoder.model.config.vocab_size
    batch = FrozenBatch(zh_ids=torch.randint(0, vocab, (batch_size, 77), generator=g),
                        en_states=torch.randn(batch_size, 77, dim, generator=g),
                        latents=torch.randn(batch_size, 4, size, size, generator=g),
                        noise=torch.randn(batch_size, 4, size, size, generator=g),
                        timesteps=torch.randint(0, 1000, (batch_size,), generator=g),
                        added_cond=placeholder_added_cond(unet, batch_size))
    optimizer = make_optimizer(encoder.parameters(), lr=1e-5, weight_decay=0.01)

    def step(objective, b):
        def run():
            loss = objective(encoder(b.zh_ids), b)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    queries, targets, _ = teacher.english_pass(batch)
    given = FrozenBatch(**{**vars(batch), "queries": queries, "targets": targets})

    def encoder_only():
        encoder(batch.zh_ids).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    out = {
        "separate": _time(step(make_objective("separate", teacher), batch), reps) if separate else float("nan"),
        "pivot (queries given)": _time(step(make_objective("pivot", teacher), given), reps),
        "encoder only (floor)": _time(encoder_only, reps),
        "english pass": _time(lambda: teacher.english_pass(batch), reps),
    }
    return {k: v / batch_size for k, v in out.items()}


def tiny(reps: int) -> dict[str, float]:
    from iap.models import load_base, load_chinese_encoder
    from iap.presets.tiny import write_tiny
    with tempfile.TemporaryDirectory() as d:
        write_tiny(d)
        base = load_base(f"{d}/base")
        encoder = load_chinese_encoder(f"{d}/zh_encoder", base.cross_attention_dim, base.max_length)
    return measure(base.unet, encoder, batch_size=32, reps=reps)


def real_shapes(unet_config: dict, reps: int, separate: bool = True, bert: dict = BERT_768) -> dict[str, float]:
    """A real UNet config (random weights) and a 768-wide BERT, projected when the UNet is wider."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
    tokenizer = SimpleNamespace(pad_token_id=0, model_max_length=77)
    model = BertModel(BertConfig(**bert), add_pooling_layer=False)
    if unet.config.cross_attention_dim != model.config.hidden_size:
        model = with_projection(model, unet.config.cross_attention_dim)
    return measure(unet, ChineseEncoder(model, tokenizer, 77), batch_size=1, reps=reps, separate=separate)


def _sdxl_english(reps: int, unet_config: dict = SDXL_UNET) -> tuple[float, FrozenBatch, dict]:
    """SDXL's UNet (random weights): the English pass's time, a batch carrying its queries and targets, and
    the cross-attention layers; the rest of the UNet is freed on return."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
    teacher = Teacher(SimpleNamespace(unet=unet, noise_scheduler=DDPMScheduler(beta_schedule="scaled_linear")))
    g = torch.Generator().manual_seed(0)
    side, width = unet.config.sample_size, unet.config.cross_attention_dim
    batch = FrozenBatch(zh_ids=torch.randint(104, 21128, (1, 77), generator=g), en_states=torch.randn(1, 77, width),
                        latents=torch.randn(1, 4, side, side, generator=g), noise=torch.randn(1, 4, side, side, generator=g),
                        timesteps=torch.randint(0, 1000, (1,), generator=g), added_cond=placeholder_added_cond(unet, 1))
    english = _time(lambda: teacher.english_pass(batch), reps)
    queries, targets, _ = teacher.english_pass(batch)
    return english, FrozenBatch(**{**vars(batch), "queries": queries, "targets": targets}), dict(teacher.layers)


def sdxl(reps: int, unet_config: dict = SDXL_UNET, tower_configs: tuple = SDXL_TOWERS) -> dict[str, float]:
    """The English pass, then SDXL's real Chinese side (two CLIP towers) trained with pivot + the pooled term
    over the recorded queries and targets: a store-cache run never holds the UNet, only its attention layers."""
    english, batch, layers = _sdxl_english(reps, unet_config)
    ids = {"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}  # hfl's [CLS], [SEP], [PAD]
    towers = DualTower(*(cls(CLIPTextConfig(vocab_size=21128, max_position_embeddings=77, **ids, **c))
                         for cls, c in zip((CLIPTextModel, CLIPTextModelWithProjection), tower_configs, strict=True)))
    encoder = ChineseEncoder(towers, SimpleNamespace(pad_token_id=0, model_max_length=77), 77)
    optimizer = make_optimizer([p for p in encoder.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)
    pivot = make_objective("pivot", None, layers=layers)

    def step(loss_of):
        def run():
            loss_of().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    def floor():
        states, pooled = encoder(batch.zh_ids)
        return states.float().pow(2).mean() + pooled.float().pow(2).mean()

    return {"separate": float("nan"), "pivot (queries given)": _time(step(lambda: pivot(encoder(batch.zh_ids), batch)), reps),
            "encoder only (floor)": _time(step(floor), reps), "english pass": english}


def report(name: str, r: dict[str, float]) -> None:
    """One row, printed as soon as it is measured (a later row that runs out of memory loses nothing)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{name:26} {r['separate'] * 1e3:10.1f}ms {r['pivot (queries given)'] * 1e3:14.1f}ms "
          f"{r['encoder only (floor)'] * 1e3:12.1f}ms {r['english pass'] * 1e3:12.1f}ms "
          f"{r['separate'] / r['pivot (queries given)']:14.1f}x {rss:10.1f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-sd2", action="store_true")
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every row at toy widths, in seconds (the test suite)")
    args = parser.parse_args()
    print(f"per-sample training step time, CPU, {torch.get_num_threads()} threads (median)")
    print(f"{'model':26} {'separate':>12} {'pivot (given q)':>16} {'encoder floor':>14} {'english pass':>14} "
          f"{'separate/pivot':>15} {'peak RSS':>13}")
    if args.quick:
        report("tiny preset (batch 32)", tiny(1))
        report("SD-shaped, toy widths", real_shapes(QUICK_UNET, 1, bert=QUICK_BERT))
        report("SDXL-shaped, toy widths", sdxl(1, QUICK_SDXL_UNET, QUICK_TOWERS))
        return
    report("tiny preset (batch 32)", tiny(args.reps * 5))
    if not args.skip_sd15:
        report("SD-1.5 shapes (batch 1)", real_shapes(SD15_UNET, args.reps))
    if not args.skip_sd2:
        report("SD-2.1 shapes (batch 1)", real_shapes(SD21_UNET, args.reps))
    if not args.skip_sdxl:
        # separate backpropagates through SDXL's UNet in fp32: more than a 24 GB machine holds (OOM-killed)
        report("SDXL, its 2 Chinese towers", sdxl(max(1, args.reps // 3)))
        print("SDXL separate: not measured (backward through the fp32 UNet exceeds 24 GB of host memory)")


if __name__ == "__main__":
    main()
