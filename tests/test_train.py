import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from iap.config import TrainConfig
from iap.errors import IapError
from iap.objective import Teacher, make_objective
from iap.training.checkpoint import latest_checkpoint, read_checkpoint_meta
from iap.training.loop import lr_at, train
from tests.helpers import kill_after_checkpoint

TRAIN_ARGS = ["--train-steps", "60", "--train-batch-size", "8", "--train-lr", "1e-3", "--train-checkpoint-every", "10",
              "--n-train", "64"]


def _train_cmd(tiny_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "iap", "train-worker", "--base", str(tiny_dir / "base"),
            "--zh-encoder", str(tiny_dir / "zh_encoder"), "--out", str(out), *TRAIN_ARGS]


def _final_weights(run: Path):
    ckpt = latest_checkpoint(run)
    assert read_checkpoint_meta(ckpt)["step"] == 60
    return load_file(ckpt / "encoder" / "model.safetensors")


@pytest.mark.e2e
def test_resume_after_kill_9_gives_identical_weights(tiny_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_dir, straight), check=True, capture_output=True, timeout=300)

    killed_at = kill_after_checkpoint(_train_cmd(tiny_dir, killed), killed, 20)
    assert 20 <= killed_at < 60

    resumed = subprocess.run(_train_cmd(tiny_dir, killed), check=True, capture_output=True, text=True, timeout=300)
    assert "resumed from" in resumed.stdout and f"step {killed_at}" in resumed.stdout
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


@pytest.fixture
def trained_run(base, encoder, small_source, tmp_path):
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, lr=1e-3, warmup_steps=1, empty_prompt_fraction=0)
    objective = make_objective("pivot", Teacher(base))
    train(cfg, encoder, objective, small_source, tmp_path / "run", log=lambda _: None)
    return cfg, objective, tmp_path / "run"


def test_corrupt_checkpoint_is_a_clear_error_not_a_restart(trained_run, encoder, small_source):
    cfg, objective, run = trained_run
    weights = latest_checkpoint(run) / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(IapError, match="corrupt"):
        train(cfg.model_copy(update={"steps": 8}), encoder, objective, small_source, run, log=lambda _: None)


def test_missing_checkpoint_is_a_clear_error(trained_run, encoder, small_source):
    cfg, objective, run = trained_run
    import shutil
    shutil.rmtree(latest_checkpoint(run))
    with pytest.raises(IapError, match="missing or corrupt"):
        train(cfg.model_copy(update={"steps": 8}), encoder, objective, small_source, run, log=lambda _: None)


def test_resume_with_a_different_config_is_refused(trained_run, encoder, small_source):
    cfg, objective, run = trained_run
    with pytest.raises(IapError, match="lr"):
        train(cfg.model_copy(update={"lr": 5e-4, "steps": 8}), encoder, objective, small_source, run,
              log=lambda _: None)


def test_resume_can_extend_steps(trained_run, encoder, small_source):
    cfg, objective, run = trained_run
    result = train(cfg.model_copy(update={"steps": 6}), encoder, objective, small_source, run, log=lambda _: None)
    assert result.steps == 6
    assert json.loads((Path(result.checkpoint) / "state.json").read_text())["step"] == 6


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
