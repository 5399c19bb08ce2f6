"""The embedded default: the full pipeline (through an engine: the iap-train flow, or in-process) on the shapes teacher (a small English
Stable Diffusion that can draw the shapes world), the tiny preset's random-init Chinese BERT and
synthetic shapes-world data served over local HTTP, then a zh/en image pair and WORKDIR/summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

from iap.cache.info import CacheConfig
from iap.config import TrainConfig
from iap.data.download import DownloadConfig
from iap.data.snapshot import FilterConfig
from iap.evaluation.config import EvalConfig
from iap.evaluation.metrics import Metrics
from iap.pipeline.request import PipelineRequest, StageConfigs
from iap.release.registry import GateConfig
from iap.system.storage import fetch_folder, is_remote, staged_folder, write_file

DEMO_TRAIN = TrainConfig(steps=600, batch_size=32, lr=2e-3, warmup_steps=30, checkpoint_every=200, log_every=100)
DEMO_ROWS = 1600  # ~1,340 distinct caption pairs after de-duplication
DEMO_PROMPTS = 200  # held-out prompts drawn per encoder: every held-out combo once


def run_demo(workdir: str | Path, engine, train: TrainConfig = DEMO_TRAIN, rows: int = DEMO_ROWS,
             base: str = "preset:shapes-teacher", prompts: int = DEMO_PROMPTS) -> dict:
    """`engine`: an iap.pipeline.engines engine; its `train` runs the pipeline. `base`: the shapes teacher, or its SDXL-
    architecture twin (preset:shapes-teacher-xl), whose Chinese side is its own two towers with the tiny BERT's
    vocabulary."""
    workdir = str(workdir).rstrip("/") if is_remote(workdir) else str(Path(workdir).resolve())
    started = time.perf_counter()
    result = engine.train(PipelineRequest(out=workdir, base=base, zh_encoder="preset:tiny", synthetic=rows), StageConfigs(
        download=DownloadConfig(image_size=32, min_image_size=16, timeout=5, number_sample_per_shard=2000,
                                thread_count=32),
        filter=FilterConfig(split_key="combo", val_fraction=0.15, test_fraction=0.0, shard_rows=500),
        cache=CacheConfig(policy="recompute", draws=4, splits=["train"]), train=train,
        # the teacher draws the three caption templates of a combo alike, so an exact-pair top-1 is capped
        # near 1/3..1; the floor is on top-5, and the semantic gate judges the images themselves
        gate=GateConfig(floor_metric="retrieval_top5", floor=0.9, semantic_metric="colour_accuracy",
                        semantic_floor=0.85, semantic_gap=0.05),
        evaluate=EvalConfig(samples=prompts, guidance_scale=3.0),  # the small teacher over-saturates at 7.5
    ))
    m = result.metrics
    samples = _sample_images(fetch_folder(result.pipeline_dir, "model_index.json", "pipelines"),
                             Path(result.base), result.snapshot, f"{workdir}/samples")
    summary = {
        "pipeline_dir": result.pipeline_dir, "checkpoint": result.checkpoint, "samples_dir": str(samples),
        "snapshot": result.snapshot, "cache": result.cache, "registry": result.registry,
        "registry_status": result.status, "registry_reason": result.reason,
        "checkpoint_id": result.checkpoint_id, "loss_curve": result.train.loss_curve,
        "metrics": {**{f"{k}_{when}": getattr(m, section)[k] for k in ("heldout_loss", "retrieval_top1", "retrieval_top5")
                       for when, section in (("before", "untrained"), ("after", "trained"))},
                    "mismatched_caption_loss": m.mismatched_caption_loss, "heldout_pairs": m.heldout_pairs,
                    **_semantic(m)},
        "evaluation": m.flat(), "train": result.train.model_dump(include={"steps", "seconds", "samples_per_second",
                                                                          "losses"}),
        "config": train.model_dump(mode="json"),
        "funnel": result.funnel, "flow_run_id": result.flow_run_id, "flow_runs": result.flow_runs,
        "lineage": result.lineage,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    write_file(f"{workdir}/summary.json", json.dumps(summary, indent=2, ensure_ascii=False).encode())
    return summary


def _sample_images(pipeline_dir: Path, base_dir: Path, snapshot_url: str, out: str) -> str:
    """One held-out prompt in Chinese (exported pipeline) and English (base model), same seed."""
    from iap.data.reader import read_shard
    from iap.data.snapshot import open_snapshot
    from iap.models.generate import generate, load_pipeline
    row = read_shard(open_snapshot(snapshot_url).split_urls("val")[0], ["caption_zh", "caption_en"])[0]
    with staged_folder(out, "prompts.json") as folder:
        generate(load_pipeline(pipeline_dir), [row["caption_zh"]], seed=0, steps=20)[0].save(folder / "zh.png")
        generate(load_pipeline(base_dir), [row["caption_en"]], seed=0, steps=20)[0].save(folder / "en.png")
        (folder / "prompts.json").write_text(json.dumps({"zh": row["caption_zh"], "en": row["caption_en"]},
                                                        ensure_ascii=False))
    return out


def _semantic(m: Metrics) -> dict:
    """Held-out prompts drawn and classified by pixel statistics: English (the teacher) vs Chinese."""
    if "colour_accuracy" not in m.trained:
        return {}
    keys = [f"{k}_accuracy" for k in ("colour", "shape_colour", "background_colour", "shape_class")]
    return {"generated_prompts": m.generated_prompts,
            **{f"{k}_en_teacher": m.english[k] for k in keys},
            **{f"{k}_zh_before": m.untrained[k] for k in keys},
            **{f"{k}_zh_after": m.trained[k] for k in keys}}
