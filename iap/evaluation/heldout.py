"""Held-out metrics for a Chinese encoder.

held-out loss      the training objective on held-out pairs, with fixed (t, noise) draws.
mismatched level   the same loss when the "Chinese" states are the English states of another
                   sample: how far apart two different captions are. A useful encoder is far below it.
retrieval top-k    for each held-out Chinese caption, rank the held-out English captions by
                   attention-feature distance; a hit when its paired English caption is in the top k.
                   Features: each cross-attention layer's output for fixed probe queries (English
                   pass of held-out images with the empty prompt at t = 250, 500, 750; `probe_positions`
                   sampled query positions per layer) over the caption's states; distance =
                   layer-weighted mean squared difference.

Memory is bounded by EvalConfig, not by the split: at most `pairs` held-out pairs (latent + states,
~300 KB each at SD-1.5 shapes), read one shard and one batch at a time; UNet passes of `batch_size`
(by default 8 at 64x64 latents, up to 64 for small ones);
retrieval features of 4 probe images x 3 timesteps x `probe_positions` per layer in fp16 (SD-1.5,
16 positions: 4.8 MB per caption), stored for the English candidates only, the Chinese side in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from iap.attention import attend
from iap.cache.live import InMemorySource, snapshot_source
from iap.evaluation.config import EvalConfig
from iap.evaluation.metrics import Metrics
from iap.evaluation.worlds import world_of
from iap.models.base import FrozenBase
from iap.models.chinese import ChineseEncoder
from iap.objective import FrozenBatch, Teacher, layer_weights, states_of
from iap.system.runtime import Runtime, place

EVAL_SEED = 1234


PROBE_TIMESTEPS = (250, 500, 750)


@torch.no_grad()
def heldout_loss(objective, encoder: ChineseEncoder | None, source: InMemorySource, device: torch.device,
                 draws: int = 2, batch_size: int = 8, mismatched: bool = False) -> float:
    """Mean objective over the held-out source with `draws` fixed (t, noise) draws per sample.
    encoder=None with mismatched=True gives the mismatched-caption reference."""
    was_training = encoder.training if encoder is not None else False
    if encoder is not None:
        encoder.eval()
    total, count = torch.zeros((), device=device), 0
    for d in range(draws):
        g = torch.Generator().manual_seed(EVAL_SEED + d)
        for i in range(0, len(source), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(source)))
            batch = source.batch(idx, g).to(device)
            states = batch.en_states.roll(1, 0) if mismatched else states_of(encoder(batch.zh_ids))
            total += objective(states, batch).float() * len(idx)
            count += len(idx)
    if encoder is not None and was_training:
        encoder.train()
    return total.item() / count


class AttentionFeatures:
    """Cross-attention outputs of fixed probe queries over a caption's states (one tensor per layer), at
    `positions` sampled query positions per layer and probe, so a caption's features have a fixed size."""

    def __init__(self, base: FrozenBase, teacher: Teacher, probe_latents: torch.Tensor,
                 weights: dict[str, float] | None = None, positions: int = 16):
        n = len(probe_latents) * len(PROBE_TIMESTEPS)
        latents = probe_latents.repeat_interleave(len(PROBE_TIMESTEPS), 0)
        t = torch.tensor(PROBE_TIMESTEPS * len(probe_latents))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(EVAL_SEED))
        states, pooled = base.english([""])
        batch = FrozenBatch(zh_ids=torch.zeros(n, 1), en_states=states.expand(n, -1, -1), latents=latents, noise=noise,
                            timesteps=t, added_cond=base.added_cond(None if pooled is None else pooled.expand(n, -1),
                                                                    latents))
        queries, _, _ = teacher.english_pass(batch)
        g = torch.Generator().manual_seed(EVAL_SEED)
        self.queries = {name: q[:, torch.randperm(q.shape[1], generator=g)[:positions].to(q.device)]
                        for name, q in queries.items()}
        self.layers, self.device = teacher.layers, base.device
        self.weights = layer_weights(list(self.layers), weights)

    @torch.no_grad()
    def __call__(self, states: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
        """states (N, L, D) -> {layer: (N, probes * positions * C)} in fp16."""
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        for i in range(0, len(states), chunk):
            s = states[i:i + chunk].to(self.device)
            for name, q in self.queries.items():
                p = q.shape[0]
                qq = q.unsqueeze(0).expand(len(s), *q.shape).flatten(0, 1)
                ss = s.repeat_interleave(p, 0)
                out[name].append(attend(self.layers[name], qq, ss).reshape(len(s), -1).half())
        return {n: torch.cat(v) for n, v in out.items()}

    def distances(self, a: torch.Tensor, b: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """(Na, Nb) layer-weighted mean squared feature distance between states a and b. Features of b are
        kept; those of a are computed `chunk` captions at a time."""
        fb, rows = self(b), []
        for i in range(0, len(a), chunk):
            fa = self(a[i:i + chunk])
            total = sum(self.weights[n] * torch.cdist(fa[n].float(), fb[n].float()).pow(2) / fa[n].shape[1] for n in fa)
            rows.append(total / sum(self.weights.values()))
        return torch.cat(rows)


@torch.no_grad()
def retrieval(features: AttentionFeatures, zh_states: torch.Tensor, en_states: torch.Tensor,
              targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of zh query i retrieving English candidate targets[i]."""
    d = features.distances(zh_states, en_states)
    ranked = d.argsort(dim=1).cpu()
    return {f"top{k}": (ranked[:, :k] == targets[:, None]).any(1).float().mean().item() for k in ks}


def encoder_metrics(base: FrozenBase, encoder: ChineseEncoder, held: InMemorySource, teacher: Teacher,
                    features: AttentionFeatures, weights: dict[str, float] | None = None,
                    batch_size: int = 8) -> dict[str, float]:
    """Held-out loss and zh->en retrieval (paired English caption among the held-out ones)."""
    from iap.objective import make_objective
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = [encoder(held.zh_ids[i:i + batch_size]) for i in range(0, len(held), batch_size)]
    zh = torch.cat([states_of(o) for o in out])
    acc = retrieval(features, zh, held.en_states, torch.arange(len(held)))
    loss = heldout_loss(make_objective("pivot", teacher, weights), encoder, held, base.device, batch_size=batch_size)
    encoder.train(was_training)
    metrics = {"heldout_loss": loss, "retrieval_top1": acc["top1"], "retrieval_top5": acc["top5"]}
    if held.added_cond is not None:  # SDXL: how far the Chinese pooled embedding is from the English one
        pooled = torch.cat([o[1] for o in out]).float()
        metrics["heldout_pooled_mse"] = F.mse_loss(pooled, held.added_cond["text_embeds"].to(pooled)).item()
    return metrics


def evaluate_checkpoint(base: FrozenBase, checkpoint: str | Path, snapshot, split: str = "val",
                        untrained: str | None = None, weights: dict[str, float] | None = None,
                        generation: EvalConfig = EvalConfig(), feature: torch.nn.Module | None = None,
                        report: str = "report", on_progress: Callable[[int, int], None] | None = None) -> Metrics:
    """Metrics of a checkpoint on (at most `generation.pairs` rows of) a snapshot split, next to the references
    computed in the same run: the untrained encoder (when given) and the mismatched-caption level; with
    samples > 0, zh-vs-en generation metrics on that many held-out prompts (the data world's choice, e.g.
    one per combo in the shapes world, and its image scores), and RUN/`report`/report.html. Runs on the base's
    device, in its precision."""
    from iap.objective import make_objective
    from iap.training.checkpoint import check_lineage, fetch_checkpoint, read_checkpoint_meta, run_of
    local = fetch_checkpoint(checkpoint)
    cfg = generation.model_copy(update={"batch_size": generation.batch_size or eval_batch_size(base)})
    meta = read_checkpoint_meta(local)
    check_lineage(meta, base.source, f"checkpoint {checkpoint}")
    encoder = _eval_encoder(base, local / "encoder")
    held, rows = snapshot_source(base, encoder, snapshot, split, limit=cfg.pairs, batch_size=cfg.batch_size)
    teacher = Teacher(base)
    features = AttentionFeatures(base, teacher, held.latents[:4], weights, cfg.probe_positions)
    metrics = Metrics(trained=encoder_metrics(base, encoder, held, teacher, features, weights, cfg.batch_size),
                      heldout_pairs=len(held))
    metrics.mismatched_caption_loss = heldout_loss(make_objective("pivot", teacher, weights), None, held,
                                                   base.device, batch_size=cfg.batch_size, mismatched=True)
    encoders = {"trained": encoder}
    if untrained:
        ref = _eval_encoder(base, untrained)
        metrics.untrained = encoder_metrics(base, ref, held, teacher, features, weights, cfg.batch_size)
        encoders["untrained"] = ref
    if cfg.samples:
        from iap.evaluation.report import write_report
        world = world_of(rows)
        prompts = (world.prompts(rows) if world else rows)[:cfg.samples]
        scores, pairs = generation_metrics(base, encoders, prompts, cfg, feature=feature, on_progress=on_progress)
        for section, values in scores.items():
            getattr(metrics, section).update(values)
        metrics.generated_prompts = len(prompts)
        run_dir = run_of(checkpoint)
        title = f"IAP evaluation: {run_dir.rsplit('/', 1)[-1]}/{local.name}"
        metrics.report = write_report(f"{run_dir}/{report}", title, metrics, pairs, meta.get("losses"))
    return metrics


def eval_batch_size(base: FrozenBase) -> int:
    """Samples per UNet pass that bound a pass's memory by the latent area: 8 at 64x64 (SD-1.5 at 512 px)."""
    size = int(base.unet.config.sample_size)
    return max(1, min(64, 8 * 64 * 64 // (size * size)))


def _eval_encoder(base: FrozenBase, source: str | Path) -> ChineseEncoder:
    """A Chinese encoder for evaluation: on the base's device and in its precision (no training)."""
    from iap.models.chinese import load_chinese_encoder
    encoder = load_chinese_encoder(source, base.cross_attention_dim, base.max_length, base=base.source)
    return place(encoder.eval().requires_grad_(False), Runtime(base.device, base.dtype))


def _pipeline(base: FrozenBase, encoder: ChineseEncoder | None):
    """The stock pipeline over the loaded base (StableDiffusionXLPipeline for SDXL); with `encoder`, its text
    encoder(s) and tokenizer(s) are the Chinese ones."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    if base.is_xl:
        towers = encoder.model if encoder else base
        tokenizers = (encoder.tokenizer,) * 2 if encoder else (base.tokenizer, base.tokenizer_2)
        pipe = StableDiffusionXLPipeline.from_pretrained(
            base.source, unet=base.unet, vae=base.vae, text_encoder=towers.text_encoder,
            text_encoder_2=towers.text_encoder_2, tokenizer=tokenizers[0], tokenizer_2=tokenizers[1])
        pipe.set_progress_bar_config(disable=True)
        return pipe
    parts = {"text_encoder": encoder.model, "tokenizer": encoder.tokenizer} if encoder else \
        {"text_encoder": base.text_encoder, "tokenizer": base.tokenizer}
    pipe = StableDiffusionPipeline.from_pretrained(base.source, unet=base.unet, vae=base.vae, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_metrics(base: FrozenBase, encoders: dict[str, ChineseEncoder], rows: list[dict],
                       cfg: EvalConfig = EvalConfig(), feature: torch.nn.Module | None = None,
                       grid: int | None = None, on_progress: Callable[[int, int], None] | None = None,
                       ) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """zh-vs-en generation metrics per encoder ("trained", "untrained") on held-out rows, and the data world's
    scores of the base's English images ("english"); returns (those sections, every row's images (or the first
    `grid` rows'): zh of each encoder and en of the base, same seed). `on_progress(image sets drawn, image
    sets)`: the base's English set, then one per encoder."""
    from iap.evaluation import image_metrics as im
    from iap.models.generate import generate
    world = world_of(rows)
    sample = {"seed": cfg.seed, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
              "batch_size": cfg.batch_size or eval_batch_size(base)}
    inception, clip_model = cfg.inception, cfg.clip_model
    sets = 1 + len(encoders)
    en = generate(_pipeline(base, None), [r["caption_en"] for r in rows], **sample)
    if on_progress:
        on_progress(1, sets)
    out: dict[str, dict[str, float]] = {"english": world.score(en, rows) if world else {}}
    pairs = [{"caption_zh": r["caption_zh"], "caption_en": r["caption_en"], "en": e}
             for r, e in zip(rows[:grid], en, strict=False)]
    for done, (name, encoder) in enumerate(encoders.items(), start=2):
        encoder.eval()
        zh = generate(_pipeline(base, encoder), [r["caption_zh"] for r in rows], **sample)
        if on_progress:
            on_progress(done, sets)
        scores = out[name] = {"consistency_pixel_l1": im.consistency(zh, en)}
        if feature is not None or inception:
            real, fake = im.to_tensor(en), im.to_tensor(zh)
            scores["kid_zh_vs_en"] = im.kid(real, fake, feature, inception)
            if im.fid_is_meaningful(len(rows), feature, real):
                scores["fid_zh_vs_en"] = im.fid(real, fake, feature, inception)
        if clip_model:
            scores["clip_score"] = im.clip_score(im.to_tensor(zh), [r["caption_en"] for r in rows], clip_model)
        if world:
            scores |= world.score(zh, rows)
        key = "zh" if name == "trained" else f"{name}_zh"
        for pair, image in zip(pairs, zh, strict=False):
            pair[key] = image
    return out, pairs
