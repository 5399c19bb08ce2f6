"""iap-evaluate: evaluate any checkpoint on any snapshot split, or on an evaluation manifest (COCO-CN style:
image URL + Chinese + English), which becomes a snapshot of its own first."""

from __future__ import annotations

from prefect import flow

from flows.data import iap_data
from iap.data.download import DownloadConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig
from iap.evaluation.config import EvalConfig
from iap.evaluation.metrics import Metrics
from iap.pipeline.engines import EVAL_SET
from iap.pipeline.stages import evaluation_key
from tasks.evaluate import evaluate


@flow(name="iap-evaluate", log_prints=True)
def iap_evaluate(checkpoint: str, snapshot: str | None, base: str, untrained: str | None = None,
                 split: str = "val", generation: EvalConfig = EvalConfig(), precision: str = "no",
                 manifest: str | None = None, out: str | None = None, download: DownloadConfig = DownloadConfig(),
                 filter: FilterConfig = FilterConfig(), columns: ManifestColumns = ManifestColumns(),  # noqa: A002
                 report: str | None = None) -> Metrics:
    """`precision`: the run's (TrainConfig.mixed_precision); on a GPU the frozen base runs in it. With
    `manifest` (and `out` for its data), the evaluation set replaces the snapshot split. `report`: the report's
    folder in the run (iap-train's: report; by default one of its own under evaluations/)."""
    if manifest:
        snapshot = iap_data(manifest, f"{out}/eval-data", download, filter.model_copy(update=EVAL_SET), columns).url
        split = "test"
    return evaluate(evaluation_key(checkpoint, snapshot, split, generation), checkpoint, snapshot, base, untrained,
                    split, generation, precision, report)
