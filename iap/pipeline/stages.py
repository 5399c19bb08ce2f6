"""The pipeline's stages as plain functions with typed results: what `iap train --engine local` calls in
order, and what each Prefect task wraps (adding retries, cache keys, assets and artifacts). One place per
rule: the run key, the evaluation key, the training stage (single process or launched), the summary."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from iap.cache.info import CacheInfo, open_cache
from iap.config import TrainConfig
from iap.data.snapshot import open_snapshot
from iap.evaluation.config import EvalConfig
from iap.evaluation.heldout import evaluate_checkpoint
from iap.evaluation.metrics import Metrics
from iap.evaluation.report import add_lineage, plot_losses
from iap.models.shared import shared_base
from iap.pipeline.request import PipelineRequest, PipelineResult
from iap.release.registry import Entry
from iap.system.ids import content_id
from iap.system.profile import stage
from iap.system.runtime import detect
from iap.system.storage import write_atomic
from iap.training.checkpoint import checkpoint_id, committed_checkpoint, read_checkpoint_meta
from iap.training.loop import train
from iap.training.result import Trained


def run_key(cache_key: str, zh_encoder: str, cfg: TrainConfig) -> str:
    """A run's content id: its cache, the encoder it starts from, and the config fields that change weights."""
    return content_id(f"{cache_key}:{zh_encoder}:{cfg.identity()}")


def evaluation_key(checkpoint: str, snapshot_url: str, split: str, generation: EvalConfig) -> str:
    return (f"eval-{checkpoint_id(checkpoint)}-{snapshot_url.rstrip('/').rsplit('/', 1)[-1]}-{split}"
            f"-{generation.identity()}")


def run_lineage(base: str, fingerprint: str, cache: CacheInfo, snapshot_url: str, zh_encoder: str,
                flow_run_id: str | None) -> dict:
    """What a checkpoint and its registry entry record about where they came from."""
    return {"base": base, "base_fingerprint": fingerprint, "snapshot_id": cache.snapshot_id,
            "snapshot_url": snapshot_url, "cache_key": cache.key, "cache_url": cache.url,
            "zh_encoder": zh_encoder, "flow_run_id": flow_run_id}


def registry_entry(trained: Trained, base: str, lineage: dict, metrics: Metrics, pipeline_url: str,
                   cfg: TrainConfig) -> Entry:
    """The registry entry of a trained checkpoint, before the gate decides its status."""
    return Entry(checkpoint_id=trained.checkpoint_id, checkpoint_url=trained.checkpoint, base=base,
                 base_fingerprint=lineage["base_fingerprint"], metrics=metrics.flat(), pipeline_url=pipeline_url,
                 lineage=lineage | {"train_config": cfg.model_dump(mode="json")})


def train_stage(cache_url: str, base: str, zh_encoder: str, run_dir: str, cfg: TrainConfig, lineage: dict,
                log: Callable[[str], None] = logging.getLogger(__name__).info, on_step: Callable | None = None) -> Trained:
    """Train the Chinese encoder from a cache into `run_dir` (resumes there), in this process or, for a
    distributed config, under torchrun / accelerate launch."""
    if cfg.distributed:
        return _train_launched(cache_url, base, zh_encoder, run_dir, cfg, lineage, log)
    from iap.training.assembly import from_cache
    info = open_cache(cache_url, base_fingerprint=lineage["base_fingerprint"])
    runtime = detect(cfg.mixed_precision)
    log(f"training on {runtime}")
    run = from_cache(info, cfg, base, zh_encoder, runtime, lambda: shared_base(base, cfg.mixed_precision))
    with stage("train") as record:
        result = train(cfg, run.encoder, run.objective, run.source, run_dir, log=log, lineage=lineage,
                       empty=run.empty, on_step=on_step)
        record["samples"] = result.steps * cfg.batch_size * cfg.grad_accum
    return result.model_copy(update={"loss_curve": _loss_curve(result.losses, run_dir)})


def worker_args(base: str, zh_encoder: str, run_dir: str, cache_url: str, config_file: str, lineage: dict) -> list:
    """The hidden CLI verb each launched process runs (`iap train-worker`)."""
    return ["train-worker", "--base", base, "--zh-encoder", zh_encoder, "--out", run_dir, "--cache", cache_url,
            "--config", config_file, "--lineage", json.dumps(lineage)]


def _train_launched(cache_url: str, base: str, zh_encoder: str, run_dir: str, cfg: TrainConfig, lineage: dict,
                    log: Callable[[str], None]) -> Trained:
    """Data-parallel training; the result is read back from the checkpoint rank 0 committed."""
    from iap.system.launch import run_launched
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "train.json"
        config_file.write_text(json.dumps({"train": cfg.model_dump(mode="json")}))  # a --config file
        run_launched(worker_args(base, zh_encoder, run_dir, cache_url, str(config_file), lineage),
                     cfg.num_processes, cfg.accelerate_config, log=log)
    ckpt = committed_checkpoint(run_dir)
    state = read_checkpoint_meta(ckpt)
    seconds = time.perf_counter() - started
    return Trained(checkpoint=str(ckpt), checkpoint_id=checkpoint_id(ckpt), steps=state["step"],
                   seconds=round(seconds, 1), samples_per_second=round(state["step"] * cfg.batch_size / seconds, 1),
                   losses=state["losses"], loss_curve=_loss_curve(state["losses"], run_dir))


def _loss_curve(losses: list, run_dir: str) -> str:
    url = f"{str(run_dir).rstrip('/')}/loss_curve.png"
    write_atomic(url, plot_losses(losses))
    return url


def evaluate_stage(checkpoint: str, snapshot_url: str, base: str, untrained: str | None, split: str = "val",
                   generation: EvalConfig | None = None, precision: str = "no", report: str | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> Metrics:
    """Held-out metrics next to the untrained and mismatched-caption references, and report.html in the run
    folder: RUN/`report` (the pipeline's: RUN/report), by default RUN/evaluations/<evaluation key>, so an
    evaluation run on its own lands beside the pipeline's report, never over it."""
    generation = generation or EvalConfig()
    report = report or f"evaluations/{evaluation_key(checkpoint, snapshot_url, split, generation)}"
    with stage("evaluate") as record:
        metrics = evaluate_checkpoint(shared_base(base, precision), checkpoint, open_snapshot(snapshot_url), split,
                                      untrained, generation=generation, report=report, on_progress=on_progress)
        record["samples"] = metrics.heldout_pairs
    return metrics


def pipeline_result(request: PipelineRequest, snapshot: str, cache: CacheInfo, run_dir: str, trained: Trained,
                    metrics: Metrics, pipeline_dir: str, registry: str, entry: Entry, runs: dict,
                    train_cfg: TrainConfig) -> PipelineResult:
    """What a pipeline run returns, whichever engine ran it, with every stage's output in its lineage (also
    written into the evaluation report)."""
    synthetic = f"synthetic: {request.synthetic} shapes-world rows" if request.synthetic else None
    result = PipelineResult(
        base=request.base, manifest=request.manifest or synthetic, snapshot=snapshot, cache=cache.url,
        run_dir=run_dir, checkpoint=trained.checkpoint, checkpoint_id=trained.checkpoint_id,
        pipeline_dir=pipeline_dir, metrics=metrics, train=trained, registry=registry,
        status=entry.status, reason=entry.reason, flow_run_id=runs.get("iap-train"),
        flow_runs=runs, train_config=train_cfg.model_dump(mode="json"), cache_key=cache.key)
    return _with_lineage(result)


def _with_lineage(result: PipelineResult) -> PipelineResult:
    """Every stage's output, manifest first and registry entry last, with the run that made it (Prefect flow
    run ids; none in-process)."""
    snap = open_snapshot(result.snapshot)
    runs, report = result.flow_runs, result.metrics.report
    download_id = snap.inputs.get("manifest", {}).get("download_id")
    decision = f"{result.status} ({result.reason})"
    rows = [("manifest", result.manifest or "-", "iap-data"),
            ("download", download_id or "-", "iap-data"),
            ("snapshot", f"{snap.id} {snap.url}", "iap-data"),
            ("cache", f"{result.cache_key} {result.cache}", "iap-precompute"),
            ("run", result.run_dir, "iap-train"),
            ("checkpoint", f"{result.checkpoint_id} {result.checkpoint}", "iap-train"),
            ("evaluation", report or "-", "iap-evaluate"),
            ("pipeline", result.pipeline_dir, "iap-train"),
            ("registry entry", f"{result.registry} ({decision})", "iap-train")]
    stages = [{"stage": what, "value": value, "flow_run_id": runs.get(flow)} for what, value, flow in rows]
    if report:
        add_lineage(report, stages, decision, snap.funnel, result.train_config)
    return result.model_copy(update={"funnel": snap.funnel, "download_id": download_id, "snapshot_id": snap.id,
                                     "report": report, "lineage": stages})
