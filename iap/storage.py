"""Writes to a storage URL (local path or s3://) that are never seen half-done.

- `write_atomic`: readers see the old object or the new one. Local: a temp file, fsync, rename.
  Object stores: a single PUT, which S3 makes visible all at once.
- `create_exclusive`: write only if nothing is there; exactly one of many concurrent callers wins.
  Local: O_CREAT|O_EXCL. S3: a conditional PUT (If-None-Match: *).
"""

from __future__ import annotations

import os
import threading
import time

import fsspec


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    return fsspec.get_fs_token_paths(url)[0]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol


def write_atomic(url: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> None:
    fs = fs or filesystem(url)
    if not is_local(fs):
        fs.pipe_file(url, data)
        return
    tmp = f"{url}.tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, url)


def create_exclusive(url: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> bool:
    """True when this call created the object; False when it already existed."""
    fs = fs or filesystem(url)
    try:
        if is_local(fs):
            fd = os.open(url, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            fs.pipe_file(url, data, mode="create")
    except FileExistsError:
        return False
    return True
