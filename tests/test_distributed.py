"""Data-parallel training for real on CPU: 2 processes (torchrun, gloo) follow the loss trajectory of 1
process with the same global batch, and a run killed with 2 processes resumes with 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iap.training.checkpoint import latest_checkpoint, read_checkpoint_meta
from tests.helpers import kill_after_checkpoint

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

STEPS = 40
CONFIG = {"steps": STEPS, "batch_size": 16, "lr": 2e-3, "warmup_steps": 4, "checkpoint_every": 10, "log_every": 5}


def _cmd(tiny_dir: Path, out: Path, processes: int, config: Path) -> list[str]:
    return [sys.executable, "-m", "iap", "train-worker", "--base", str(tiny_dir / "base"), "--zh-encoder",
            str(tiny_dir / "zh_encoder"), "--out", str(out), "--config", str(config), "--n-train", "160",
            "--train-num-processes", str(processes)]


def _losses(run: Path) -> list[tuple[int, float]]:
    meta = read_checkpoint_meta(latest_checkpoint(run))
    assert meta["step"] == STEPS
    return [tuple(x) for x in meta["losses"]]


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"train": CONFIG}))
    return path


def test_two_processes_follow_one_process_and_resume_with_another_world_size(tiny_dir, tmp_path):
    config = _config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_cmd(tiny_dir, tmp_path / "one", 1, config), capture_output=True, text=True, timeout=600,
                         env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_cmd(tiny_dir, tmp_path / "two", 2, config), capture_output=True, text=True, timeout=600,
                         env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data parallel on 2 processes" in two.stdout + two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    print("1 process:", a, "\n2 processes:", b)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert b[-1][1] < b[0][1] / 3  # it trains
    for (step, la), (_, lb) in zip(a, b, strict=True):  # same trajectory up to the noise of the draws
        assert abs(la - lb) <= 0.25 * max(la, lb), (step, la, lb)

    # kill -9 the whole 2-process job (launcher and ranks) after a checkpoint, resume with 1 process
    killed = tmp_path / "killed"
    killed_at = kill_after_checkpoint(_cmd(tiny_dir, killed, 2, config), killed, 20, env)
    assert 20 <= killed_at < STEPS
    resumed = subprocess.run(_cmd(tiny_dir, killed, 1, config), capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"step {killed_at}" in resumed.stdout
    c = _losses(killed)
    assert c[:killed_at // 5] == b[:killed_at // 5]  # the 2-process part is the 2-process run's
    assert abs(c[-1][1] - a[-1][1]) <= 0.25 * max(c[-1][1], a[-1][1])
