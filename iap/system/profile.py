"""Per-stage wall time and peak memory (this process's RSS, the GPU allocator's peak), for the rehearsal
and the GPU self-check (bench/rehearsal.py). Stages record into a process-wide list; a stage that runs
several times (mapped shards) is summed in time and maxed in memory by `summary()`."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

RECORDS: list[dict] = []


def _cuda():
    """torch, when this process has imported it and has a GPU: a stage without torch (the data stages) uses
    no GPU memory, and importing torch only to say so costs seconds at every start."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@contextmanager
def stage(name: str, samples: int | None = None, interval: float = 0.05) -> Iterator[dict]:
    """Measure the block; `samples` (or record['samples'] set inside) gives samples/s."""
    record = {"stage": name, "samples": samples, "peak_rss": rss_bytes()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            record["peak_rss"] = max(record["peak_rss"], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if (torch := _cuda()) is not None:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield record
    finally:
        if (torch := _cuda()) is not None:  # imported inside the stage: its peak since the process began
            torch.cuda.synchronize()
            record["peak_gpu"] = torch.cuda.max_memory_allocated()
        record["seconds"] = time.perf_counter() - start
        done.set()
        sampler.join()
        record["peak_rss"] = max(record["peak_rss"], rss_bytes())
        RECORDS.append(record)


def summary() -> list[dict]:
    """One row per stage name, in first-seen order."""
    rows: dict[str, dict] = {}
    for r in RECORDS:
        row = rows.setdefault(r["stage"], {"stage": r["stage"], "seconds": 0.0, "peak_rss": 0, "peak_gpu": 0,
                                            "samples": 0})
        row["seconds"] += r["seconds"]
        row["peak_rss"] = max(row["peak_rss"], r["peak_rss"])
        row["peak_gpu"] = max(row["peak_gpu"], r.get("peak_gpu", 0))
        row["samples"] += r.get("samples") or 0
    return list(rows.values())
