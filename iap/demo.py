"""The embedded default: the smallest honest version of the whole job, offline, in a few minutes.

tiny preset -> shapes-world triples (held-out combos never trained on) -> metrics before ->
train with `pivot` -> metrics after -> export -> generate zh and en images with one seed ->
WORKDIR/summary.json.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from iap.config import TrainConfig
from iap.data import shapes
from iap.evaluate import AttentionFeatures, heldout_loss, retrieval
from iap.export import export_pipeline
from iap.generate import generate, load_pipeline
from iap.models import load_base, load_chinese_encoder
from iap.models.tiny import write_tiny
from iap.objective import Teacher, make_objective
from iap.source import build_in_memory_source, image_size
from iap.train import train

DEMO_TRAIN = TrainConfig(steps=600, batch_size=32, lr=2e-3, warmup_steps=30, checkpoint_every=200, log_every=100)


def split_samples(n_train: int, seed: int) -> tuple[list[shapes.Sample], list[shapes.Sample]]:
    """Training samples from seen combos; one held-out sample per (held-out combo, template)."""
    train = [s for s in shapes.samples(n_train * 2, seed) if not shapes.is_held_out(s.combo)][:n_train]
    rng = random.Random(seed + 1)
    held = [shapes.Sample(c, t, rng.randrange(2**31)) for c in shapes.all_combos() if shapes.is_held_out(c)
            for t in range(len(shapes.EN_TEMPLATES))]
    return train, held


def _metrics(objective, encoder, held_src, features, zh_ids) -> dict:
    encoder.eval()
    with torch.no_grad():
        zh_states = torch.cat([encoder(zh_ids[i:i + 64]) for i in range(0, len(zh_ids), 64)])
    acc = retrieval(features, zh_states, held_src.en_states, torch.arange(len(zh_ids)))
    loss = heldout_loss(objective, encoder, held_src)
    encoder.train()
    return {"heldout_loss": loss, "retrieval_top1": acc["top1"], "retrieval_top5": acc["top5"]}


def run_demo(workdir: str | Path, cfg: TrainConfig = DEMO_TRAIN, n_train: int = 1200, seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    workdir = Path(workdir)
    started = time.perf_counter()
    models = workdir / "models"
    if not (models / "preset.json").exists():
        log(f"writing the tiny preset to {models}")
        write_tiny(models)
    base = load_base(models / "base")
    encoder = load_chinese_encoder(models / "zh_encoder", base.cross_attention_dim, base.max_length)
    train_samples, held = split_samples(n_train, seed)
    size = image_size(base)

    def source(samples):
        return build_in_memory_source(base, encoder, [shapes.render(s, size) for s in samples],
                                      [s.caption_en for s in samples], [s.caption_zh for s in samples])

    train_src, held_src = source(train_samples), source(held)
    log(f"{len(train_src)} training triples, {len(held_src)} held-out triples "
        f"({len(held) // len(shapes.EN_TEMPLATES)} combos never seen in training)")
    teacher = Teacher(base)
    objective = make_objective("pivot", teacher, cfg.layer_weights)
    features = AttentionFeatures(base, teacher, held_src.latents[:4], cfg.layer_weights)
    before = _metrics(objective, encoder, held_src, features, held_src.zh_ids)
    mismatched = heldout_loss(objective, None, held_src, mismatched=True)
    log(f"before training: {before}; mismatched-caption level {mismatched:.5f}")
    lineage = {"base": str(models / "base"), "base_fingerprint": base.fingerprint, "data": "shapes-world demo",
               "seed": seed}
    result = train(cfg, encoder, objective, train_src, workdir / "run", log=log, lineage=lineage)
    after = _metrics(objective, encoder, held_src, features, held_src.zh_ids)
    log(f"after training: {after}")
    pipeline_dir = export_pipeline(result.checkpoint, str(models / "base"), workdir / "pipeline")
    samples_dir = _sample_images(pipeline_dir, models / "base", held[0], workdir / "samples")
    summary = {
        "pipeline_dir": str(pipeline_dir), "checkpoint": str(result.checkpoint), "samples_dir": str(samples_dir),
        "metrics": {"heldout_loss_before": before["heldout_loss"], "heldout_loss_after": after["heldout_loss"],
                    "mismatched_caption_loss": mismatched,
                    "retrieval_top1_before": before["retrieval_top1"], "retrieval_top1_after": after["retrieval_top1"],
                    "retrieval_top5_before": before["retrieval_top5"], "retrieval_top5_after": after["retrieval_top5"],
                    "heldout_pairs": len(held_src), "train_pairs": len(train_src)},
        "train": {"steps": result.state.step, "seconds": round(result.seconds, 1),
                  "samples_per_second": round(result.samples_per_second, 1), "losses": result.state.losses},
        "config": cfg.model_dump(mode="json"), "seconds_total": round(time.perf_counter() - started, 1),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _sample_images(pipeline_dir: Path, base_dir: Path, sample: shapes.Sample, out: Path) -> Path:
    """The same held-out prompt in Chinese (exported pipeline) and English (base), same seed."""
    out.mkdir(parents=True, exist_ok=True)
    generate(load_pipeline(pipeline_dir), [sample.caption_zh], seed=0, steps=20)[0].save(out / "zh.png")
    generate(load_pipeline(base_dir), [sample.caption_en], seed=0, steps=20)[0].save(out / "en.png")
    (out / "prompts.json").write_text(json.dumps({"zh": sample.caption_zh, "en": sample.caption_en},
                                                 ensure_ascii=False))
    return out
