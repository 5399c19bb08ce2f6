"""The training task: the training stage, with its progress and loss curve as artifacts."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import materialize

from iap.config import TrainConfig
from iap.pipeline.stages import train_stage
from iap.training.result import Trained
from tasks import PERSIST, artifacts, by_key
from tasks.data import PLACEHOLDER_ASSET


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **PERSIST)
def train_encoder(key: str, cache_url: str, base: str, zh_encoder: str, run_dir: str, config: TrainConfig,
                  lineage: dict) -> Trained:
    """Train the Chinese encoder from the cache into run_dir (resumes); `key` is the run's content id."""
    progress = create_progress_artifact(progress=0.0, key="iap-train-progress", description="training steps")
    trained = train_stage(cache_url, base, zh_encoder, run_dir, config, lineage, log=get_run_logger().info,
                          on_step=lambda s: update_progress_artifact(progress, 100.0 * s.step / config.steps))
    artifacts.loss_curve(trained.loss_curve, f"final loss {trained.losses[-1][1]:.6f} after {trained.steps} steps, "
                                             f"{trained.samples_per_second:.1f} samples/s")
    return trained
