"""What training returns, apart from the loop's torch code: the pipeline, the CLI and the flows read it."""

from __future__ import annotations

from pydantic import BaseModel


class Trained(BaseModel):
    """What a training run produced: its committed checkpoint and how the run went. The one result of
    training, from the loop, the launched workers and the pipeline's stage (which adds the loss curve)."""

    checkpoint: str  # a URL for a remote run
    checkpoint_id: str
    steps: int
    seconds: float
    samples_per_second: float
    losses: list[tuple[int, float]]
    loss_curve: str = ""  # PNG beside the run's checkpoints, drawn by the pipeline stage
