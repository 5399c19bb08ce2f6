"""Held-out metrics for a Chinese encoder.

held-out loss      the training objective on held-out pairs, with fixed (t, noise) draws.
mismatched level   the same loss when the "Chinese" states are the English states of another
                   sample: how far apart two different captions are. A useful encoder is far below it.
retrieval top-k    for each held-out Chinese caption, rank the held-out English captions by
                   attention-feature distance; a hit when its paired English caption is in the top k.
                   Features: each cross-attention layer's output for fixed probe queries (English
                   pass of held-out images with the empty prompt at t = 250, 500, 750) over the
                   caption's states; distance = layer-weighted mean squared difference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from iap.attention import attend
from iap.config import StageConfig
from iap.models.base import BaseModel
from iap.models.chinese import ChineseEncoder
from iap.objective import FrozenBatch, Teacher, layer_weights
from iap.source import InMemorySource, snapshot_source

EVAL_SEED = 1234


class EvalConfig(StageConfig):
    """How images are generated for the generation metrics."""

    samples: int = Field(64, ge=0, description="held-out prompts to draw (one per combo in the shapes world); "
                                              "0: no generation metrics")
    steps: int = Field(20, ge=1, description="DDIM steps")
    guidance_scale: float = Field(7.5, ge=1.0, description="classifier-free guidance (small models: lower)")
    seed: int = 0
PROBE_TIMESTEPS = (250, 500, 750)


@torch.no_grad()
def heldout_loss(objective, encoder: ChineseEncoder | None, source: InMemorySource, draws: int = 2,
                 batch_size: int = 64, mismatched: bool = False) -> float:
    """Mean objective over the held-out source with `draws` fixed (t, noise) draws per sample.
    encoder=None with mismatched=True gives the mismatched-caption reference."""
    was_training = encoder.training if encoder is not None else False
    if encoder is not None:
        encoder.eval()
    total, count = 0.0, 0
    for d in range(draws):
        g = torch.Generator().manual_seed(EVAL_SEED + d)
        for i in range(0, len(source), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(source)))
            batch = source.batch(idx, g)
            states = batch.en_states.roll(1, 0) if mismatched else encoder(batch.zh_ids)
            total += objective(states, batch).item() * len(idx)
            count += len(idx)
    if encoder is not None and was_training:
        encoder.train()
    return total / count


class AttentionFeatures:
    """Cross-attention outputs of fixed probe queries over a caption's states (one tensor per layer)."""

    def __init__(self, base: BaseModel, teacher: Teacher, probe_latents: torch.Tensor,
                 weights: dict[str, float] | None = None):
        n = len(probe_latents) * len(PROBE_TIMESTEPS)
        latents = probe_latents.repeat_interleave(len(PROBE_TIMESTEPS), 0)
        t = torch.tensor(PROBE_TIMESTEPS * len(probe_latents))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(EVAL_SEED))
        empty = base.encode_english([""]).expand(n, -1, -1)
        batch = FrozenBatch(zh_ids=torch.zeros(n, 1), en_states=empty, latents=latents, noise=noise, timesteps=t)
        self.queries, _, _ = teacher.english_pass(batch.to(base.device))
        self.layers = teacher.layers
        self.weights = layer_weights(list(self.layers), weights)

    @torch.no_grad()
    def __call__(self, states: torch.Tensor, chunk: int = 32) -> dict[str, torch.Tensor]:
        """states (N, L, D) -> {layer: (N, probes * HW * C)}."""
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        for i in range(0, len(states), chunk):
            s = states[i:i + chunk]
            for name, q in self.queries.items():
                p = q.shape[0]
                qq = q.unsqueeze(0).expand(len(s), *q.shape).flatten(0, 1)
                ss = s.repeat_interleave(p, 0)
                out[name].append(attend(self.layers[name], qq, ss).reshape(len(s), -1).float())
        return {n: torch.cat(v) for n, v in out.items()}

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(Na, Nb) layer-weighted mean squared feature distance between states a and b."""
        fa, fb = self(a), self(b)
        total = sum(self.weights[n] * torch.cdist(fa[n], fb[n]).pow(2) / fa[n].shape[1] for n in fa)
        return total / sum(self.weights.values())


@torch.no_grad()
def retrieval(features: AttentionFeatures, zh_states: torch.Tensor, en_states: torch.Tensor,
              targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of zh query i retrieving English candidate targets[i]."""
    d = features.distances(zh_states, en_states)
    ranked = d.argsort(dim=1)
    return {f"top{k}": (ranked[:, :k] == targets[:, None]).any(1).float().mean().item() for k in ks}


def encoder_metrics(base: BaseModel, encoder: ChineseEncoder, held: InMemorySource, teacher: Teacher,
                    features: AttentionFeatures, weights: dict[str, float] | None = None) -> dict[str, float]:
    """Held-out loss and zh->en retrieval (paired English caption among the held-out ones)."""
    from iap.objective import make_objective
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        zh = torch.cat([encoder(held.zh_ids[i:i + 64]) for i in range(0, len(held), 64)])
    acc = retrieval(features, zh, held.en_states, torch.arange(len(held)))
    loss = heldout_loss(make_objective("pivot", teacher, weights), encoder, held)
    encoder.train(was_training)
    return {"heldout_loss": loss, "retrieval_top1": acc["top1"], "retrieval_top5": acc["top5"]}


def evaluate_checkpoint(base: BaseModel, checkpoint: str | Path, snapshot, split: str = "val",
                        untrained: str | None = None, weights: dict[str, float] | None = None,
                        generation: EvalConfig = EvalConfig(), feature: torch.nn.Module | None = None, inception: str | None = None,
                        clip_model: str | None = None) -> dict:
    """Metrics of a checkpoint on a snapshot split, next to the references computed in the same run:
    the untrained encoder (when given) and the mismatched-caption level; with samples > 0, zh-vs-en
    generation metrics on that many held-out prompts (one per combo in the shapes world), and
    report.html in the run folder."""
    from iap.checkpoint import check_lineage, read_checkpoint_meta
    from iap.models.chinese import load_chinese_encoder
    checkpoint = Path(checkpoint)
    check_lineage(read_checkpoint_meta(checkpoint), base.source, f"checkpoint {checkpoint}")
    encoder = load_chinese_encoder(checkpoint / "encoder", base.cross_attention_dim, base.max_length)
    held, rows = snapshot_source(base, encoder, snapshot, split)
    teacher = Teacher(base)
    features = AttentionFeatures(base, teacher, held.latents[:4], weights)
    from iap.objective import make_objective
    metrics = encoder_metrics(base, encoder, held, teacher, features, weights)
    metrics["mismatched_caption_loss"] = heldout_loss(make_objective("pivot", teacher, weights), None, held,
                                                      mismatched=True)
    encoders = {"": encoder}
    if untrained:
        ref = load_chinese_encoder(untrained, base.cross_attention_dim, base.max_length)
        metrics |= {f"untrained_{k}": v for k, v in encoder_metrics(base, ref, held, teacher, features, weights).items()}
        encoders["untrained_"] = ref
    metrics["heldout_pairs"] = len(held)
    if generation.samples:
        from iap.report import write_report
        generated, pairs = generation_metrics(base, encoders, _one_per_combo(rows)[:generation.samples], generation,
                                              feature=feature, inception=inception, clip_model=clip_model)
        metrics |= generated
        run_dir = checkpoint.parent.parent
        metrics["report"] = str(write_report(run_dir / "report", f"IAP evaluation: {run_dir.name}/{checkpoint.name}",
                                             metrics, pairs, run_dir / "loss_curve.png"))
    return metrics


def _pipeline(base: BaseModel, encoder: ChineseEncoder | None):
    """A StableDiffusionPipeline over the loaded base; with `encoder`, its text encoder is the Chinese one."""
    from diffusers import StableDiffusionPipeline
    parts = {"text_encoder": encoder.model, "tokenizer": encoder.tokenizer} if encoder else \
        {"text_encoder": base.text_encoder, "tokenizer": base.tokenizer}
    pipe = StableDiffusionPipeline.from_pretrained(base.source, unet=base.unet, vae=base.vae, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _one_per_combo(rows: list[dict]) -> list[dict]:
    """In the shapes world, one row per distinct combo (so accuracy is over combos, not repeats)."""
    if not all("combo" in r for r in rows):
        return rows
    seen: dict[str, dict] = {}
    for r in rows:
        seen.setdefault(r["combo"], r)
    return list(seen.values())


def _shapes_targets(rows: list[dict]) -> dict[str, list[str]]:
    """Prompted shape colour, background colour and shape class from the combo name."""
    fg = [r["combo"].split("-on-")[0].split("-") for r in rows]  # size-colour-shape
    return {"colors": [f[1] for f in fg], "backgrounds": [r["combo"].split("-on-")[1] for r in rows],
            "classes": [f[2] for f in fg]}


def generation_metrics(base: BaseModel, encoders: dict[str, ChineseEncoder], rows: list[dict],
                       cfg: EvalConfig = EvalConfig(), feature: torch.nn.Module | None = None, inception: str | None = None,
                       clip_model: str | None = None, grid: int = 8) -> tuple[dict[str, float], list[dict]]:
    """zh-vs-en generation metrics per encoder on held-out rows; returns (metrics, the first `grid` rows'
    images: zh of each encoder and en of the base, same seed)."""
    from iap import image_metrics as im
    from iap.generate import generate
    sample = {"seed": cfg.seed, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
    en = generate(_pipeline(base, None), [r["caption_en"] for r in rows], **sample)
    shapes_world = all("combo" in r for r in rows)
    out: dict[str, float] = {"generated_prompts": len(rows)}
    if shapes_world:  # the base's own (English) accuracy: the level a transfer can reach
        out |= {f"teacher_en_{k}": v for k, v in im.shapes_accuracy(en, **_shapes_targets(rows)).items()}
    pairs = [{"caption_zh": r["caption_zh"], "caption_en": r["caption_en"], "en": e}
             for r, e in zip(rows[:grid], en, strict=False)]
    for name, encoder in encoders.items():
        encoder.eval()
        zh = generate(_pipeline(base, encoder), [r["caption_zh"] for r in rows], **sample)
        out[f"{name}consistency_pixel_l1"] = im.consistency(zh, en)
        if feature is not None or inception:
            out[f"{name}fid_zh_vs_en"] = im.fid(im.to_tensor(en), im.to_tensor(zh), feature, inception)
        if clip_model:
            out[f"{name}clip_score"] = im.clip_score(im.to_tensor(zh), [r["caption_en"] for r in rows], clip_model)
        if shapes_world:
            out |= {f"{name}{k}": v for k, v in im.shapes_accuracy(zh, **_shapes_targets(rows)).items()}
        for pair, image in zip(pairs, zh, strict=False):
            pair[f"{name}zh"] = image
    return out, pairs
