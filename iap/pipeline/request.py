"""What a pipeline run is asked (a request and the eight stage sections) and what it returns: the same types
for `iap train --engine local` (iap.pipeline.local) and the iap-train flow, so neither repeats the other's
parameters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from iap.cache.info import CacheConfig
from iap.config import SD15, ZH_768, TrainConfig
from iap.data.download import DownloadConfig
from iap.data.english import EnglishConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig
from iap.evaluation.config import EvalConfig
from iap.evaluation.metrics import Metrics
from iap.release.registry import GateConfig
from iap.training.result import Trained


class PipelineRequest(BaseModel):
    """Where the run writes, what it transfers, and its one data source."""

    model_config = ConfigDict(extra="forbid")
    out: str
    base: str = SD15
    zh_encoder: str = ZH_768
    manifest: str | None = None
    snapshot: str | None = None
    synthetic: int = 0  # this many shapes-world rows (smoke runs)
    registry: str | None = None  # default OUT/registry
    push_to_hub: str | None = None  # a Hub repo the exported pipeline is uploaded to once promoted


class StageConfigs(BaseModel):
    """One config per stage section, as `--SECTION-FIELD` options and `--config` files name them."""

    model_config = ConfigDict(extra="forbid")
    download: DownloadConfig = DownloadConfig()
    filter: FilterConfig = FilterConfig()
    columns: ManifestColumns = ManifestColumns()
    english: EnglishConfig = EnglishConfig()
    cache: CacheConfig = CacheConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()


class PipelineResult(BaseModel):
    """What a pipeline run returns (and `iap train` / `iap demo` summarise), whichever engine ran it."""

    base: str
    manifest: str | None
    snapshot: str
    cache: str
    run_dir: str
    checkpoint: str
    checkpoint_id: str
    pipeline_dir: str
    metrics: Metrics
    train: Trained  # the checkpoint, steps, speed, loss history and curve
    registry: str
    status: str
    reason: str
    flow_run_id: str | None
    flow_runs: dict[str, str | None]
    train_config: dict
    # filled from the snapshot and the report once every stage ran (iap.pipeline.stages.pipeline_result)
    funnel: list[dict] = []
    download_id: str | None = None
    snapshot_id: str = ""
    cache_key: str = ""
    report: str | None = None
    lineage: list[dict] = []
    hub: str | None = None  # the Hub upload's line, when push_to_hub was asked


def describe(result: PipelineResult) -> str:
    """The lines that end a pipeline run: the registry decision, then where every output went."""
    decision = f"{result.status} ({result.reason})"
    return f"checkpoint {result.checkpoint_id}: {decision}\n" + "\n".join(
        f"  {s['stage']:15} {s['value']}" for s in result.lineage) + (f"\n  {result.hub}" if result.hub else "")
