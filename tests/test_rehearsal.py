"""Real-shape rehearsals (SD-1.5 configs, random weights): minutes each on a CPU, so out of the default run.
Run them with `pytest -m rehearsal`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.rehearsal, pytest.mark.e2e]


def test_evaluation_memory_at_sd15_shapes_does_not_grow_with_the_split():
    """Peak RSS of evaluate_checkpoint on 8 and on 64 held-out rows, each in a fresh process, within 10%."""
    from bench.eval_memory import REHEARSAL, measure
    if not any((REHEARSAL / "run" / "runs").glob("*/checkpoints/step-*")):
        subprocess.run([sys.executable, str(ROOT / "bench" / "rehearsal.py")], check=True)
    small, large = measure([8, 64])
    assert "error" not in small and "error" not in large, (small, large)
    assert large["rows"] >= 6 * small["rows"]  # the split really grew (dedup may drop a few)
    assert large["peak_rss"] <= 1.10 * small["peak_rss"], (small, large)
