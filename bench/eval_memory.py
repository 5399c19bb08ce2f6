"""Evaluation memory at SD-1.5 shapes: peak RSS of `evaluate_checkpoint` on 8 vs 64 held-out rows.

Uses the rehearsal's random-weight SD-1.5-shaped base, RoBERTa-shaped encoder and trained checkpoint
(run `python bench/rehearsal.py` first), snapshots of N shapes-world rows at 512 px, and one fresh
process per N, so each peak is its own. No image generation (samples=0): the losses, the mismatched
level and retrieval are what grew with the split.

    python bench/eval_memory.py [--rows 8,64] [--rehearsal DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REHEARSAL = Path(tempfile.gettempdir()) / "iap-rehearsal"


def snapshot_of(rows: int, work: Path, px: int = 512) -> str:
    """A snapshot whose train split holds the shapes world's first `rows` distinct triples at `px` pixels."""
    from iap.data.download import DownloadConfig
    from iap.data.pipeline import run_data
    from iap.data.snapshot import FilterConfig
    from iap.shapes.synth import serve, write_synth
    from tests.helpers import free_port
    port = free_port()
    folder = work / f"synth-{rows}"
    manifest = write_synth(folder, rows, seed=1, base_url=f"http://127.0.0.1:{port}", image_px=px)
    server = serve(folder, port)
    try:
        _, snapshot = run_data(str(manifest), str(work / f"data-{rows}"),
                               DownloadConfig(image_size=px, min_image_size=min(128, px // 2)),
                               FilterConfig(val_fraction=0.0, test_fraction=0.0))
    finally:
        server.shutdown()
    return snapshot.url


def child(snapshot_url: str, checkpoint: str, base: str) -> None:
    """Run one evaluation and print its figures as JSON (the process's own peak RSS)."""
    import iap
    from iap.data.snapshot import open_snapshot
    from iap.evaluation.config import EvalConfig
    from iap.evaluation.heldout import evaluate_checkpoint
    from iap.models import load_base
    print(f"iap from {iap.__file__}", file=sys.stderr)
    model = load_base(base)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    metrics = evaluate_checkpoint(model, checkpoint, open_snapshot(snapshot_url), split="train",
                                  generation=EvalConfig(samples=0))
    print(json.dumps({"rows": metrics.heldout_pairs, "seconds": round(time.perf_counter() - started, 1),
                      "rss_after_load": loaded, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def measure(rows: list[int], rehearsal: Path = REHEARSAL, python_path: str | None = None) -> list[dict]:
    """One child process per row count; `python_path` runs another checkout's code (the 'before' figures)."""
    used = rehearsal / "models" / "used.json"  # which models the rehearsal trained (--quick: the tiny preset)
    models = json.loads(used.read_text()) if used.exists() else {"base": str(rehearsal / "models" / "sd15"),
                                                                   "image_px": 512}
    base, px = Path(models["base"]), models["image_px"]
    checkpoint = next((rehearsal / "run" / "runs").glob("*/checkpoints/step-*"), None)
    if checkpoint is None:
        raise SystemExit(f"no rehearsal checkpoint under {rehearsal}: run python bench/rehearsal.py first")
    env = os.environ | ({"PYTHONPATH": python_path} if python_path else {})
    out = []
    for n in rows:
        url = snapshot_of(n, rehearsal / "eval-memory", px)
        # ROOT is appended (and the child runs elsewhere), so PYTHONPATH's `iap` wins when --code is given
        code = (f"import sys; sys.path.append({str(ROOT)!r}); from bench.eval_memory import child; "
                f"child({url!r}, {str(checkpoint)!r}, {str(base)!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              cwd=tempfile.gettempdir())
        if done.returncode != 0:
            out.append({"rows": n, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]})
            continue
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8,64", help="held-out row counts, comma-separated")
    parser.add_argument("--rehearsal", default=str(REHEARSAL), help="bench/rehearsal.py's work folder")
    parser.add_argument("--code", help="PYTHONPATH of another checkout (e.g. a git worktree of the old code)")
    parser.add_argument("--quick", action="store_true", help="4 and 8 rows (after bench/rehearsal.py --quick)")
    args = parser.parse_args()
    if args.quick:
        args.rows = "4,8"
    results = measure([int(n) for n in args.rows.split(",")], Path(args.rehearsal), args.code)
    print(f"{'rows':>6}{'eval s':>9}{'RSS after load GB':>19}{'peak RSS GB':>13}{'peak - load GB':>16}")
    for r in results:
        if "error" in r:
            print(f"{r['rows']:>6}  failed: {r['error']}")
            continue
        print(f"{r['rows']:>6}{r['seconds']:>9.1f}{r['rss_after_load'] / 1e9:>19.2f}{r['peak_rss'] / 1e9:>13.2f}"
              f"{(r['peak_rss'] - r['rss_after_load']) / 1e9:>16.2f}")


if __name__ == "__main__":
    main()
