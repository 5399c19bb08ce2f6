"""iap-evaluate: evaluate any checkpoint on any snapshot split, or on an evaluation manifest (COCO-CN style:
image URL + Chinese + English), which becomes a snapshot of its own first."""

from __future__ import annotations

from prefect import flow

from flows.data import iap_data
from iap.checkpoint import checkpoint_id
from iap.data.download import DownloadConfig
from iap.data.manifest import ManifestColumns
from iap.data.snapshot import FilterConfig
from iap.evaluate import EvalConfig
from tasks.evaluate import evaluate

# an evaluation set is used whole (every row in `test`), and several captions of one image are all kept
EVAL_SET = {"val_fraction": 0.0, "test_fraction": 1.0, "dedup_image": False}


@flow(name="iap-evaluate", log_prints=True)
def iap_evaluate(checkpoint: str, snapshot: str | None, base: str, untrained: str | None = None,
                 split: str = "val", generation: EvalConfig = EvalConfig(), precision: str = "no",
                 manifest: str | None = None, out: str | None = None, download: DownloadConfig = DownloadConfig(),
                 filter: FilterConfig = FilterConfig(), columns: ManifestColumns = ManifestColumns()) -> dict:  # noqa: A002
    """`precision`: the run's (TrainConfig.mixed_precision); on a GPU the frozen base runs in it. With
    `manifest` (and `out` for its data), the evaluation set replaces the snapshot split."""
    if manifest:
        snapshot = iap_data(manifest, f"{out}/eval-data", download, filter.model_copy(update=EVAL_SET), columns)["url"]
        split = "test"
    key = (f"eval-{checkpoint_id(checkpoint)}-{snapshot.rstrip('/').rsplit('/', 1)[-1]}-{split}"
           f"-{generation.identity()}")
    return evaluate(key, checkpoint, snapshot, base, untrained, split, generation, precision)
