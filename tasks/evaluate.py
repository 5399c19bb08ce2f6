"""Evaluation, export and registration tasks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.assets import materialize

from iap.evaluation.config import EvalConfig
from iap.evaluation.metrics import Metrics
from iap.pipeline.stages import evaluate_stage
from iap.release.export import export_pipeline, publish
from iap.release.registry import Entry, GateConfig, Registry
from iap.system.profile import stage
from tasks import PERSIST, artifacts, by_key, retrying
from tasks.data import PLACEHOLDER_ASSET


@task(cache_key_fn=by_key, **PERSIST)
def evaluate(key: str, checkpoint: str, snapshot_url: str, base: str, untrained: str | None,
             split: str = "val", generation: EvalConfig = EvalConfig(), precision: str = "no",
             report: str | None = None) -> Metrics:
    """Held-out metrics next to the untrained and mismatched-caption references; `key`: checkpoint, snapshot
    and generation config. `report`: its folder in the run (iap.pipeline.stages.evaluate_stage)."""
    metrics = evaluate_stage(checkpoint, snapshot_url, base, untrained, split, generation, precision, report)
    artifacts.metrics(metrics.flat(), f"held-out metrics ({split} split of {snapshot_url})")
    return metrics


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **retrying(1), **PERSIST)
def export(key: str, checkpoint: str, base: str, out: str, metrics: Metrics | None = None,
           dataset: str | None = None) -> str:
    """A plain diffusers pipeline with the Chinese encoder (its card carries `metrics` on `dataset`); `key` is
    the checkpoint id."""
    with stage("export"):
        return str(export_pipeline(checkpoint, base, out, metrics, dataset))


@task(**retrying(2, 5))
def push(repo_id: str, pipeline_dir: str, status: str) -> str:
    """Upload the exported pipeline to a Hub repo when the registry promoted it (a bad token is not retried)."""
    line = publish(pipeline_dir, repo_id, status)
    get_run_logger().info(line)
    return line


@materialize(PLACEHOLDER_ASSET, **retrying(2, 2))
def register(registry_url: str, entry: Entry, gate: GateConfig) -> Entry:
    """Add the checkpoint to the registry (idempotent by checkpoint id) and decide promotion."""
    return Registry(registry_url).register(entry, gate)
