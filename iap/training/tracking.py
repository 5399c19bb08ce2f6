"""Experiment trackers (`--train-report-to`), as diffusers' training scripts have them: accelerate's
TensorBoard, Weights & Biases and MLflow trackers, one run per training run (named by its run folder), with the
loss, learning rate and samples/s at every log step and the held-out metrics once evaluated.

Where the records go: TensorBoard event files under RUN/trackers/ (uploaded beside a remote run); W&B as
`wandb` is configured (WANDB_MODE=offline writes under RUN/trackers/wandb); MLflow to MLFLOW_TRACKING_URI,
else a SQLite store, RUN/trackers/mlflow.db (`mlflow ui --backend-store-uri sqlite:///RUN/trackers/mlflow.db`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from accelerate import Accelerator

from iap.system.storage import is_remote, local_workdir, put_tree


def tracked_accelerator(report_to: str, files: Path, **kwargs) -> Accelerator:
    """An Accelerator that logs to `report_to` (none: to nothing) with its files under `files`."""
    if report_to == "none":
        return Accelerator(**kwargs)
    files.mkdir(parents=True, exist_ok=True)
    if report_to == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(files / 'mlflow.db').resolve()}")
    return Accelerator(log_with=report_to, project_dir=str(files), **kwargs)


def folder(run_url: str) -> Path:
    """Where a run's tracker files are written: RUN/trackers, on this machine (a remote run's staging folder)."""
    return local_workdir(run_url) / "trackers"


def run_name(run_url: str) -> str:
    """A run's name in the trackers: its folder's name (the run key), the same on every resume."""
    return str(run_url).rstrip("/").rsplit("/", 1)[-1]


def upload(report_to: str, run_url: str) -> None:
    """TensorBoard's event files beside a remote run (RUN/trackers); the other trackers keep their own stores."""
    if report_to == "tensorboard" and is_remote(run_url) and folder(run_url).exists():
        put_tree(folder(run_url), f"{run_url.rstrip('/')}/trackers")


def start(accelerator: Accelerator, report_to: str, run_url: str, config: dict) -> None:
    """Open the tracker run; a resumed (or evaluated) run continues the same W&B run."""
    if report_to == "none":
        return
    name = run_name(run_url)
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.items()}
    accelerator.init_trackers(
        "iap", config=flat,
        init_kwargs={"wandb": {"name": name, "id": name, "resume": "allow", "dir": str(folder(run_url))},
                     "mlflow": {"run_name": name}})


def log_evaluation(report_to: str, run_url: str, metrics: dict, step: int) -> None:
    """The held-out metrics (by their flat names: Metrics.flat()), at the checkpoint's step, into the training
    run's tracker."""
    if report_to == "none":
        return
    import torch
    accelerator = tracked_accelerator(report_to, folder(run_url), cpu=not torch.cuda.is_available())
    start(accelerator, report_to, run_url, {"stage": "evaluate"})
    accelerator.log({f"eval/{k}": float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}, step=step)
    accelerator.end_training()
    upload(report_to, run_url)
