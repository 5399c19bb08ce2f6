"""Baselines in one run: train every objective (live) and the pivot objective from each cache policy
on the same snapshot with the same config, evaluate each the same way, one table."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from iap.cache.info import CacheConfig
from iap.cache.live import snapshot_source
from iap.cache.writer import precompute
from iap.config import TrainConfig
from iap.evaluation.config import EvalConfig
from iap.evaluation.heldout import evaluate_checkpoint
from iap.models.base import FrozenBase
from iap.models.chinese import load_chinese_encoder
from iap.system.runtime import Runtime
from iap.system.storage import write_file
from iap.training.assembly import from_cache, live
from iap.training.loop import train

COLUMNS = ("heldout_loss", "retrieval_top1", "retrieval_top5", "consistency_pixel_l1", "colour_accuracy",
           "shape_class_accuracy", "teacher_en_colour_accuracy", "train_seconds")


def compare(base: FrozenBase, zh_encoder: str, snapshot, out: str | Path, cfg: TrainConfig,
            objectives: tuple[str, ...] = ("pivot", "separate", "embedding-mse", "eps-distill"),
            policies: tuple[str, ...] = ("recompute", "store", "store-sampled"),
            generation: EvalConfig = EvalConfig(),
            log: Callable[[str], None] = logging.getLogger(__name__).info) -> list[dict]:
    out = str(out).rstrip("/")  # a local folder or a URL: every output below is named from it
    fresh = lambda: load_chinese_encoder(zh_encoder, base.cross_attention_dim, base.max_length,  # noqa: E731
                                         base=base.source)
    live_source, _ = snapshot_source(base, fresh(), snapshot, "train")
    runs = [(name, "live", live_source) for name in objectives]
    runtime = Runtime(base.device, base.dtype)
    for policy in policies:
        info = precompute(snapshot, lambda: base, base.fingerprint, f"{out}/cache",
                          CacheConfig(policy=policy, splits=["train"]), log=lambda _: None)
        runs.append(("pivot", policy, info))
    rows = []
    for name, policy, data in runs:
        run_cfg = cfg.model_copy(update={"objective": name})
        run = live(base, fresh(), run_cfg, data) if policy == "live" else \
            from_cache(data, run_cfg, base.source, zh_encoder, runtime, lambda: base)
        started = time.perf_counter()
        result = train(run_cfg, run.encoder, run.objective, run.source, f"{out}/{name}-{policy}", log=lambda _: None,
                       lineage={"base": base.source, "base_fingerprint": base.fingerprint, "snapshot_id": snapshot.id},
                       empty=run.empty)
        seconds = time.perf_counter() - started
        flat = evaluate_checkpoint(base, result.checkpoint, snapshot, generation=generation).flat()
        rows.append({"objective": name, "teacher": policy, **{k: flat.get(k) for k in COLUMNS[:-1]},
                     "train_seconds": round(seconds, 1)})
        log(f"{name} ({policy}): " + ", ".join(f"{k}={rows[-1][k]}" for k in COLUMNS if rows[-1][k] is not None))
    write_file(f"{out}/compare.json", json.dumps(rows, indent=1).encode())
    return rows
