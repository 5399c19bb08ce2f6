"""The full pipeline in this process, without Prefect (`iap train --engine local`): the same stages in the
same order as the iap-train flow, so the same inputs give the same snapshot, cache, run and checkpoint.
data -> precompute -> train -> evaluate -> export -> register."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

from iap.cache.info import CacheConfig
from iap.cache.writer import precompute
from iap.config import SD15, ZH_768, TrainConfig
from iap.data.download import DownloadConfig
from iap.data.english import EnglishConfig
from iap.data.manifest import ManifestColumns
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig, open_snapshot
from iap.evaluation.heldout import EvalConfig
from iap.models.shared import shared_base
from iap.pipeline.preflight import check_inputs
from iap.pipeline.stages import (
    evaluate_stage,
    lineage_stages,
    pipeline_result,
    registry_entry,
    run_key,
    run_lineage,
    train_stage,
)
from iap.presets.synthetic import synthetic_manifest
from iap.release.export import card_dataset, export_pipeline, publish
from iap.release.registry import Entry, GateConfig, Registry
from iap.training.tracking import log_evaluation


def run_pipeline(
    out: str, base: str = SD15, zh_encoder: str = ZH_768, manifest: str | None = None,
    snapshot: str | None = None, synthetic: int = 0, registry: str | None = None,
    download: DownloadConfig = DownloadConfig(), filter: FilterConfig = FilterConfig(),  # noqa: A002
    cache: CacheConfig = CacheConfig(), train: TrainConfig = TrainConfig(), gate: GateConfig = GateConfig(),
    columns: ManifestColumns = ManifestColumns(), evaluate: EvalConfig = EvalConfig(),
    english: EnglishConfig = EnglishConfig(), log: Callable[[str], None] = logging.getLogger(__name__).info,
    progress: Callable[[str, int, int], None] | None = None, push_to_hub: str | None = None,
) -> dict:
    """Must run in the main thread of a `__main__`-guarded program (img2dataset spawns processes).
    `progress(stage, done, total)`: precompute shards, training steps and evaluation image sets as they go.
    `push_to_hub`: a Hub repo the exported pipeline is uploaded to when the registry promotes it."""
    base, zh_encoder, fingerprint = check_inputs(out, base, zh_encoder, manifest, snapshot, synthetic)
    runs: dict = {"iap-train": None, "iap-data": None, "iap-precompute": None, "iap-evaluate": None}
    if snapshot is None:
        with synthetic_manifest(out, synthetic, download.min_image_size) as synth:
            snapshot = run_data(synth or manifest, f"{out}/data", download, filter, columns, english=english)[1].url
    info = asdict(precompute(open_snapshot(snapshot), lambda: shared_base(base, train.mixed_precision), fingerprint,
                             f"{out}/cache", cache, log=log, on_progress=progress and partial(progress, "precompute")))
    run_dir = f"{out}/runs/{run_key(info['key'], zh_encoder, train)}"
    lineage = run_lineage(base, fingerprint, info, snapshot, zh_encoder, None)
    on_step = (lambda state: progress("train", state.step, train.steps)) if progress else None
    trained = train_stage(info["url"], base, zh_encoder, run_dir, train, lineage, log=log, on_step=on_step)
    metrics = evaluate_stage(trained.checkpoint, snapshot, base, zh_encoder, "val", evaluate, train.mixed_precision,
                             report="report", on_progress=progress and partial(progress, "evaluate"))
    log_evaluation(train.report_to, run_dir, metrics, trained.steps)
    pipeline = str(export_pipeline(trained.checkpoint, base, f"{out}/pipelines/{trained.checkpoint_id}", metrics,
                                   card_dataset(snapshot)))
    registry = registry or f"{out}/registry"
    entry = asdict(Registry(registry).register(Entry(**registry_entry(trained, base, lineage, metrics, pipeline,
                                                                      train)), gate))
    result = pipeline_result(base=base, manifest=manifest, synthetic=synthetic, snapshot=snapshot,
                             cache_url=info["url"], run_dir=run_dir, trained=trained, metrics=metrics,
                             pipeline_dir=pipeline, registry=registry, entry=entry, runs=runs, train_cfg=train)
    if push_to_hub:
        result["hub"] = publish(pipeline, push_to_hub, entry["status"])
    return result | lineage_stages(result, info["key"])[1]
