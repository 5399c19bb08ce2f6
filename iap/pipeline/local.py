"""The full pipeline in this process, without Prefect (`iap train --engine local`): the same stages in the
same order as the iap-train flow, so the same inputs give the same snapshot, cache, run and checkpoint.
data -> precompute -> train -> evaluate -> export -> register."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from iap.cache.writer import precompute
from iap.data.pipeline import run_data
from iap.data.snapshot import open_snapshot
from iap.models.shared import shared_base
from iap.pipeline.preflight import check_inputs
from iap.pipeline.request import PipelineRequest, PipelineResult, StageConfigs
from iap.pipeline.stages import (
    evaluate_stage,
    pipeline_result,
    registry_entry,
    run_key,
    run_lineage,
    train_stage,
)
from iap.presets.synthetic import synthetic_manifest
from iap.release.export import card_dataset, export_pipeline, publish
from iap.release.registry import Registry
from iap.training.tracking import log_evaluation


def run_pipeline(request: PipelineRequest, configs: StageConfigs = StageConfigs(),
                 log: Callable[[str], None] = logging.getLogger(__name__).info,
                 progress: Callable[[str, int, int], None] | None = None) -> PipelineResult:
    """Must run in the main thread of a `__main__`-guarded program (img2dataset spawns processes).
    `progress(stage, done, total)`: precompute shards, training steps and evaluation image sets as they go."""
    r, c = request, configs
    base, zh_encoder, fingerprint = check_inputs(r.out, r.base, r.zh_encoder, r.manifest, r.snapshot, r.synthetic)
    runs: dict = {"iap-train": None, "iap-data": None, "iap-precompute": None, "iap-evaluate": None}
    snapshot = r.snapshot
    if snapshot is None:
        with synthetic_manifest(r.out, r.synthetic, c.download.min_image_size) as synth:
            snapshot = run_data(synth or r.manifest, f"{r.out}/data", c.download, c.filter, c.columns,
                                english=c.english)[1].url
    info = precompute(open_snapshot(snapshot), lambda: shared_base(base, c.train.mixed_precision), fingerprint,
                      f"{r.out}/cache", c.cache, log=log, on_progress=progress and partial(progress, "precompute"))
    run_dir = f"{r.out}/runs/{run_key(info.key, zh_encoder, c.train)}"
    lineage = run_lineage(base, fingerprint, info, snapshot, zh_encoder, None)
    on_step = (lambda state: progress("train", state.step, c.train.steps)) if progress else None
    trained = train_stage(info.url, base, zh_encoder, run_dir, c.train, lineage, log=log, on_step=on_step)
    metrics = evaluate_stage(trained.checkpoint, snapshot, base, zh_encoder, "val", c.evaluate,
                             c.train.mixed_precision, report="report",
                             on_progress=progress and partial(progress, "evaluate"))
    log_evaluation(c.train.report_to, run_dir, metrics.flat(), trained.steps)
    pipeline = str(export_pipeline(trained.checkpoint, base, f"{r.out}/pipelines/{trained.checkpoint_id}", metrics,
                                   card_dataset(snapshot)))
    registry = r.registry or f"{r.out}/registry"
    entry = Registry(registry).register(registry_entry(trained, base, lineage, metrics, pipeline, c.train), c.gate)
    result = pipeline_result(r.model_copy(update={"base": base}), snapshot, info, run_dir, trained, metrics,
                             pipeline, registry, entry, runs, c.train)
    if r.push_to_hub:
        result = result.model_copy(update={"hub": publish(pipeline, r.push_to_hub, entry.status)})
    return result
