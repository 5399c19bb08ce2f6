"""Every bench/ script runs in its --quick mode (toy shapes, seconds), so a bench that no longer matches the
code fails the suite instead of a user (issue 27, finding 3: bench/cache.py's SDXL row had crashed unseen)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))


def bench(name: str, *args: str, timeout: int = 600) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / name), "--quick", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_every_bench_has_a_quick_mode_that_the_suite_runs():
    covered = {"cache.py", "corpora.py", "data.py", "eval_memory.py", "manifest.py", "precompute.py", "rehearsal.py",
               "startup.py", "train_step.py"}
    assert set(BENCHES) == covered, "a new bench needs a --quick run below"
    for name in BENCHES:
        assert "--quick" in (ROOT / "bench" / name).read_text(), name


@pytest.mark.parametrize("name, expected", [
    ("cache.py", "SDXL-shaped, toy widths"), ("train_step.py", "SDXL-shaped, toy widths"),
    ("data.py", "naive Python loop"), ("corpora.py", "MT, tiny MarianMT preset"),
    ("startup.py", "naive: import torch, diffusers, transformers"), ("manifest.py", "iap data --dry-run"),
    ("precompute.py", "process        2")])
def test_quick_bench(name, expected):
    assert expected in bench(name)


def test_quick_rehearsal_then_eval_memory(tmp_path):
    out = bench("rehearsal.py", "--out", str(tmp_path / "rehearsal"))
    assert "rehearsal of iap-train/full at tiny-preset shapes" in out and "registry:" in out
    table = bench("eval_memory.py", "--rehearsal", str(tmp_path / "rehearsal"))
    assert "failed" not in table and len(table.strip().splitlines()) == 3, table
