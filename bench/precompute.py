"""Precompute across task runners on this machine's CPUs: cache shards per second with 1 and 2 workers for
the thread, process, dask and ray runners, each as the iap-precompute flow runs it (a local cluster started
and stopped per run, the base loaded once per worker: both counted). Shapes-world data served on 127.0.0.1,
downloaded once; the tiny preset's base (SD-1.5-shaped, toy widths) with the `store` policy. The flows talk
to the configured Prefect server (PREFECT_API_URL), else to one started for the bench, as a deployment's do (without one, each worker process would
start its own temporary API). The first row also pays the flow process's own base load. On a GPU node
the same runners put worker i on GPU i; here every worker shares the CPU cores, so the figures show each
runner's overhead, not GPU scaling.

    python bench/precompute.py [--rows 600] [--runners thread,process,dask,ray] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iap.cache.info import CacheConfig
from iap.data.download import DownloadConfig
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig
from iap.presets.tiny import write_tiny
from iap.shapes.synth import serve, write_synth


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_server(home: Path) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1; PREFECT_API_URL set for this process and its workers."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", url.split(":")[-1][:-4],
                             "--no-ui", "--no-scheduler"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(home))
    subprocess.run([prefect, "server", "status", "--wait", "--timeout", "180"], check=True, capture_output=True)
    return proc


def snapshot(rows: int, folder: Path, shard_rows: int) -> str:
    port = free_port()
    manifest = write_synth(folder / "synth", rows, seed=0, base_url=f"http://127.0.0.1:{port}")
    server = serve(folder / "synth", port)
    try:
        _, snap = run_data(str(manifest), str(folder / "data"),
                           DownloadConfig(image_size=32, min_image_size=16, timeout=5),
                           FilterConfig(shard_rows=shard_rows, val_fraction=0.1, test_fraction=0.0))
    finally:
        server.shutdown()
    return snap.url


def run(snapshot_url: str, base: str, out: Path, runner: str, workers: int) -> tuple[float, int, int]:
    """(seconds, shards, samples) of one iap-precompute flow run."""
    from flows.precompute import iap_precompute
    cfg = CacheConfig(policy="store", draws=1, positions=8, task_runner=runner, workers=workers)
    started = time.perf_counter()
    info = iap_precompute(snapshot_url, base, str(out), cfg)
    seconds = time.perf_counter() - started
    shards = [s for split in info.shards.values() for s in split]
    return seconds, len(shards), sum(s["rows"] for s in shards)


def table(rows: int, shard_rows: int, runners: list[str], folder: Path) -> None:
    url = snapshot(rows, folder, shard_rows)
    base = str(write_tiny(folder / "tiny") / "base")
    print(f"precompute of {rows} shapes-world rows, tiny preset, store policy (CPU, local clusters)")
    print(f"{'runner':<8} {'workers':>7} {'shards':>6} {'seconds':>8} {'shards/s':>9} {'samples/s':>10} "
          f"{'vs thread x1':>12}")
    reference = None
    for runner in runners:
        for workers in (1, 2):
            seconds, shards, samples = run(url, base, folder / f"cache-{runner}-{workers}", runner, workers)
            reference = reference or seconds
            print(f"{runner:<8} {workers:>7} {shards:>6} {seconds:>8.1f} {shards / seconds:>9.2f} "
                  f"{samples / seconds:>10.1f} {reference / seconds:>11.2f}x")
    print(f"peak RSS of this process (the flow; not the workers): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="manifest rows (shapes world)")
    parser.add_argument("--shard-rows", type=int, default=50, help="snapshot rows per shard")
    parser.add_argument("--runners", default="thread,process,dask,ray", help="comma-separated task runners")
    parser.add_argument("--quick", action="store_true", help="60 rows, thread and process only")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.shard_rows, args.runners = 60, 10, "thread,process"
    with tempfile.TemporaryDirectory() as tmp:
        server = None if os.environ.get("PREFECT_API_URL") else prefect_server(Path(tmp, "prefect"))
        try:
            table(args.rows, args.shard_rows, args.runners.split(","), Path(tmp))
        finally:
            if server is not None:
                server.terminate()
                server.wait(60)


if __name__ == "__main__":
    main()
