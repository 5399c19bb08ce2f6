"""What a user waits before any work starts: the program's start-up (`iap --help` took 10.5 s when every
command imported torch, diffusers and transformers through the stage configs).

    python bench/startup.py [--repeat 3] [--quick]

Prints, side by side, the median wall time and peak RSS of `iap --help`, `iap data --help` and importing the
data flow, against the naive way: importing the model libraries the commands no longer need at start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1e6  # ru_maxrss: KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the median is printed)")
    parser.add_argument("--quick", action="store_true", help="one run each (seconds: the test suite)")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    iap = str(Path(sys.executable).with_name("iap"))
    commands = [("iap --help", [iap, "--help"]), ("iap data --help", [iap, "data", "--help"]),
                ("import flows.data (the data flow)", [sys.executable, "-c", "import flows.data"]),
                ("naive: import torch, diffusers, transformers",
                 [sys.executable, "-c", "import torch, diffusers, transformers"])]
    rows = []
    for name, cmd in commands:
        runs = [run(cmd) for _ in range(repeat)]
        rows.append((name, statistics.median(s for s, _ in runs), max(g for _, g in runs)))
    naive = rows[-1][1]
    print(f"start-up, {repeat} run(s) each, median")
    print(f"{'command':48} {'wall s':>7} {'x naive':>8} {'peak RSS GB':>12}")
    for name, seconds, gb in rows:
        print(f"{name:48} {seconds:7.2f} {seconds / naive:8.2f} {gb:12.2f}")


if __name__ == "__main__":
    main()
