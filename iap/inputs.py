"""Pipeline-start checks (fail before any work) and the synthetic data source of smoke runs and the demo."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from iap.errors import IapError
from iap.models.base import check_source, weights_fingerprint
from iap.models.hub import check_pair
from iap.models.presets import resolve
from iap.storage import check_reachable, local_workdir


def check_inputs(out: str, base: str, zh_encoder: str, manifest: str | None, snapshot: str | None,
                 synthetic: int) -> tuple[str, str, str]:
    """Resolve presets and check what configs alone can tell, before any data work: paths, the data source,
    the encoder's width against the UNet's (hub ids: config files only, at the pinned revision)."""
    if sum(x is not None and x != 0 for x in (manifest, snapshot, synthetic or None)) != 1:
        raise IapError("give exactly one data source: manifest, snapshot or synthetic (a row count)")
    check_reachable(out)
    if not base.startswith("preset:"):  # check user paths before writing anything
        check_source(base)
    base, zh_encoder = resolve(base, zh_encoder, local_workdir(out))  # presets are local files
    check_pair(base, zh_encoder)
    return base, zh_encoder, weights_fingerprint(base)


def _stable_server(folder: Path, out: str):
    """Serve on a port derived from `out` (the next free one if taken), so URLs repeat across runs."""
    from iap.shapes.synth import serve
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
    from iap.shapes.synth import write_synth
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
