"""`--synthetic N`: a manifest of N shapes-world rows served over HTTP on 127.0.0.1, the data source of smoke
runs and the demo (real downloads by img2dataset, no outside network)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from iap.errors import IapError
from iap.shapes.synth import serve, write_synth
from iap.system.storage import local_workdir


def _stable_server(folder: Path, out: str):
    """Serve on a port derived from `out` (the next free one if taken), so URLs repeat across runs."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 20000 + int(hashlib.sha256(str(local_workdir(out).resolve()).encode()).hexdigest(), 16) % 20000
    for port in range(start, start + 50):
        try:
            return serve(folder, port), port
        except OSError:
            continue
    raise IapError("no free port on 127.0.0.1 for the synthetic data server")


@contextlib.contextmanager
def synthetic_manifest(out: str, rows: int, min_image_size: int = 0) -> Iterator[str | None]:
    """For smoke runs: shapes-world images served over HTTP on 127.0.0.1 for the data flow, drawn at least
    as large as the download's minimum (else every row fails as too_small)."""
    if not rows:
        yield None
        return
    folder = local_workdir(out) / "synthetic"  # served from this machine whatever `out` is
    server, port = _stable_server(folder, out)
    manifest = folder / "manifest.parquet"
    px = max(64, min_image_size)
    stamp = folder / f"written-{rows}-{port}" if px == 64 else folder / f"written-{rows}-{port}-{px}px"
    if not stamp.exists():  # same rows, port and size: same manifest content, so the download is reused
        write_synth(folder, rows, seed=0, base_url=f"http://127.0.0.1:{port}", image_px=px)
        stamp.touch()
    try:
        yield str(manifest)
    finally:
        server.shutdown()
