"""iap-evaluate: evaluate any checkpoint on any snapshot split."""

from __future__ import annotations

from prefect import flow

from iap.checkpoint import checkpoint_id
from iap.evaluate import EvalConfig
from tasks.evaluate import evaluate


@flow(name="iap-evaluate", log_prints=True)
def iap_evaluate(checkpoint: str, snapshot: str, base: str, untrained: str | None = None,
                 split: str = "val", generation: EvalConfig = EvalConfig(), precision: str = "no") -> dict:
    """`precision`: the run's (TrainConfig.mixed_precision); on a GPU the frozen base runs in it."""
    key = (f"eval-{checkpoint_id(checkpoint)}-{snapshot.rstrip('/').rsplit('/', 1)[-1]}-{split}"
           f"-{generation.content_hash()}")
    return evaluate(key, checkpoint, snapshot, base, untrained, split, generation, precision)
