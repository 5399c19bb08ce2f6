"""--train-report-to (issue 27, finding 4): accelerate's trackers, for real and offline: TensorBoard event
files, a W&B offline run, an MLflow SQLite store. Each gets the training curve and the held-out metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from iap.config import TrainConfig

CFG = dict(steps=4, batch_size=4, checkpoint_every=4, log_every=2, warmup_steps=1, empty_prompt_fraction=0)


def _train(base, encoder, source, run, report_to: str):
    from iap.objective import Teacher, make_objective
    from iap.training.loop import train
    from iap.training.tracking import log_evaluation
    cfg = TrainConfig(**CFG, report_to=report_to)
    train(cfg, encoder, make_objective("pivot", Teacher(base)), source, run, log=lambda _: None)
    log_evaluation(report_to, str(run), {"heldout_loss": 0.25, "retrieval_top1": 0.5, "report": "x"}, 4)


def test_tensorboard_gets_the_curve_and_the_evaluation(base, encoder, small_source, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    _train(base, encoder, small_source, run, "tensorboard")
    scalars: dict[str, list] = {}
    for events in (run / "trackers").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    assert [s for s, _ in sorted(scalars["train/loss"])] == [2, 4]
    assert {"train/lr", "train/samples_per_second"} <= scalars.keys()
    assert scalars["eval/heldout_loss"] == [(4, 0.25)] and "eval/report" not in scalars


def test_mlflow_store_gets_the_curve_and_the_evaluation(base, encoder, small_source, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    _train(base, encoder, small_source, run, "mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{(run / 'trackers' / 'mlflow.db').resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = {r.info.run_name: r for r in runs}
    assert set(history) == {"run"}
    losses = [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")]
    assert sorted(losses) == [2, 4]
    assert any(r.data.metrics.get("eval/heldout_loss") == 0.25 for r in runs)
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by the tracker for this process


@pytest.mark.e2e
def test_wandb_offline_run_is_written(tiny_dir, tmp_path):
    """In a child process: wandb keeps process-wide state, and offline mode must be the user's own setting."""
    code = f"""
import sys
from iap.models import load_base, load_chinese_encoder
from tests.helpers import shapes_source
from tests.test_tracking import _train
base = load_base({str(tiny_dir / "base")!r})
encoder = load_chinese_encoder({str(tiny_dir / "zh_encoder")!r}, base.cross_attention_dim, base.max_length)
_train(base, encoder, shapes_source(base, encoder), {str(tmp_path / "run")!r}, "wandb")
"""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    offline = list((tmp_path / "run" / "trackers" / "wandb").glob("offline-run-*"))
    assert offline and all(list(d.glob("*.wandb")) for d in offline)


@pytest.mark.parametrize("value", ["tensorboard", "none"])
def test_the_option_is_a_launch_setting(value):
    """Tracking changes no id: a run resumes (and a cache is reused) with another tracker."""
    assert TrainConfig(report_to=value).identity() == TrainConfig().identity()
