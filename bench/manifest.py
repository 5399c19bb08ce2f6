"""The manifest stage at Wukong scale: time and peak RSS of `iap data --dry-run` (read, key, account, dedup and
plan the download of a whole manifest) at growing row counts, next to the naive way (the whole table in memory,
keys and duplicates in Python, as iap did before issue 25), each in a fresh process.

    python bench/manifest.py [--rows 1000000 5000000] [--formats parquet csv] [--naive-max 2000000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

NAIVE = """
import hashlib, sys, pyarrow.csv as c, pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path) if path.endswith(".parquet") else c.read_csv(path)
rows = t.to_pylist()
keys = [hashlib.sha1(f"{r['url']}\\t{r['caption_zh']}\\t{r['caption_en']}".encode()).hexdigest()[:16] for r in rows]
first = {}
for i, k in enumerate(keys):
    first.setdefault(k, i)
print(len(first))
"""


def write_manifest(path: Path, rows: int, duplicates: float = 0.01) -> None:
    """Wukong-shaped rows (url, caption_zh, caption_en), ~1% exact repeats, written in 500k-row batches."""
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, 500_000):
        ids = np.arange(start, min(rows, start + 500_000))
        ids = np.where(rng.random(len(ids)) < duplicates, rng.integers(0, max(1, start + 1), len(ids)), ids)
        table = pa.table({"url": [f"https://img.example.com/p/{i:09d}.jpg" for i in ids],
                          "caption_zh": [f"一只猫坐在红色的沙发上，窗外是雪 第{i}号" for i in ids],
                          "caption_en": [f"a cat sitting on a red sofa, snow outside the window, number {i}"
                                         for i in ids]})
        if writer is None:
            writer = (pq.ParquetWriter(path, table.schema) if path.suffix == ".parquet"
                      else pacsv.CSVWriter(path, table.schema))
        writer.write_table(table)
    writer.close()


class _Popen(subprocess.Popen):
    """Popen that keeps the child's own resource usage (os.wait4): its peak RSS, not the largest of all children."""

    def _try_wait(self, wait_flags):
        pid, status, self.rusage = os.wait4(self.pid, wait_flags)
        return pid, status


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS GB, stdout) of a command in a fresh process."""
    start = time.perf_counter()
    proc = _Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{err[-2000:]}")
    return time.perf_counter() - start, proc.rusage.ru_maxrss / 1e6, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--formats", nargs="+", default=["parquet", "csv"])
    parser.add_argument("--naive-max", type=int, default=2_000_000, help="largest size run the naive way")
    parser.add_argument("--quick", action="store_true", help="20,000 and 100,000 rows, Parquet (the test suite)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.formats, args.naive_max = [20_000, 100_000], ["parquet"], 100_000
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            for rows in args.rows:
                path = Path(tmp) / f"m{rows}.{fmt}"
                write_manifest(path, rows)
                wall, rss, out = measure([sys.executable, "-m", "iap", "data", "--manifest", str(path),
                                          "--out", str(Path(tmp) / "out"), "--dry-run"])
                assert "nothing was written" in out, out
                row = f"{fmt:8} {rows:>11,}  {wall:8.1f}  {rss:7.2f}"
                if rows <= args.naive_max:
                    n_wall, n_rss, _ = measure([sys.executable, "-c", NAIVE, str(path)])
                    row += f"  {n_wall:8.1f}  {n_rss:7.2f}  {rss / n_rss:9.2f}"
                lines.append(row)
                path.unlink()
    print(f"\nmanifest stage, fresh process each (peak RSS GB; DuckDB budget IAP_DUCKDB_MEMORY="
          f"{os.environ.get('IAP_DUCKDB_MEMORY', '512MB')})")
    print("                      iap data --dry-run   naive (whole table)   RSS")
    print("format          rows    wall s   RSS GB    wall s   RSS GB  x naive")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
