"""Writes to a storage URL (local path or s3://) that are never seen half-done.

- `write_atomic`: readers see the old object or the new one. Local: a temp file, fsync, rename.
  Object stores: a single PUT, which S3 makes visible all at once.
- `create_exclusive`: write only if nothing is there; exactly one of many concurrent callers wins.
  Local: O_CREAT|O_EXCL. S3: a conditional PUT (If-None-Match: *).
- `staged_folder`: a folder output (snapshot, checkpoint, pipeline) built aside and made visible whole.
  Local: fsync, then a rename of a hidden sibling. Object stores: every file uploaded, the commit marker
  (what readers check first) last. A local staging folder names its owner (host, boot, pid), and only
  a writer removes another's, once that owner is provably gone.

Every stage writes its outputs through these; no other module renames or fsyncs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec

from iap.errors import IapError, StorageError
from iap.system.ids import content_id


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    return fsspec.get_fs_token_paths(url)[0]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol


def write_atomic(url: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> None:
    fs = fs or filesystem(url)
    if not is_local(fs):
        with storage_faults(url):
            fs.pipe_file(url, data)
        return
    tmp = f"{url}.tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    with storage_faults(url):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, url)
        except BaseException:  # a full disk: no temp file left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def remove_if_unchanged(url: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> bool:
    """Delete the object at `url` only if it still holds exactly `data` (a lock released or broken by the one
    that read it): True when this call removed it. Local: the file is claimed by a rename, checked, and put back
    when another's. S3: a conditional DELETE (If-Match on the ETag, which is the MD5 of a single-PUT body)."""
    fs = fs or filesystem(url)
    if not is_local(fs):
        bucket, key = fs.split_path(url)[:2]
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{hashlib.md5(data).hexdigest()}"')
        except OSError as e:  # s3fs's translation of 412 PreconditionFailed (another's lock), or already gone
            code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code")
            if isinstance(e, FileNotFoundError) or code == "PreconditionFailed":
                return False
            raise
        fs.invalidate_cache(url)
        return True
    claimed = f"{url}.claimed-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    try:
        os.rename(url, claimed)
    except FileNotFoundError:
        return False
    with open(claimed, "rb") as f:
        ours = f.read() == data
    if not ours:
        with contextlib.suppress(FileExistsError):  # a newer lock was taken meanwhile: that one stands
            os.link(claimed, url)
    os.unlink(claimed)
    return ours


# What a failing disk or store raises under a write: the errors that say the storage, not the input, failed.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


@contextlib.contextmanager
def storage_faults(url: str | os.PathLike) -> Iterator[None]:
    """Turn a storage failure under the block into one StorageError naming `url`; any other error passes as it
    is. Local: a full disk, a quota, a read-only or failing disk. Remote (wrap only writes to the store): any
    error of the store (a refused or vanished bucket, a dropped endpoint)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - only storage failures are converted; the rest re-raised below
        reason = _storage_reason(e, remote=is_remote(url))
        if reason is None:
            raise
        raise StorageError(f"cannot write {url}: {reason}. Nothing partial is visible there; free space (or fix "
                           "the storage) and run again: finished stages are reused, training resumes") from e


def _storage_reason(e: Exception, remote: bool) -> str | None:
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return e.strerror or str(e)
    if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):  # safetensors' own write error
        return str(e).split("I/O error:", 1)[1].strip()
    if remote and isinstance(e, (OSError, ConnectionError)):
        return (str(e).splitlines() or [type(e).__name__])[0]
    return None


def create_exclusive(url: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None) -> bool:
    """True when this call created the object; False when it already existed."""
    fs = fs or filesystem(url)
    try:
        if is_local(fs):
            fd = os.open(url, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:  # a full disk: no empty object that looks held forever
                os.unlink(url)
                raise
        else:
            fs.pipe_file(url, data, mode="create")
    except FileExistsError:
        return False
    return True


@contextlib.contextmanager
def staged_folder(url: str | os.PathLike, marker: str) -> Iterator[Path]:
    """A local folder to build the output at `url` in. When the block ends without error the output appears
    whole (an earlier one at `url` is replaced), with `marker` its commit point; otherwise nothing changes
    at `url`."""
    if is_remote(url):
        url = str(url).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="iap-stage-") as tmp:
            with storage_faults(tmp):  # this machine's disk, where the output is built
                yield Path(tmp)
            with storage_faults(url):
                fs = filesystem(url)
                if fs.exists(url):  # an earlier or half-uploaded one: readers see no marker meanwhile
                    fs.rm(url, recursive=True)
                put_tree(Path(tmp), url, last=marker)
        return
    final = Path(url)
    with storage_faults(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_stages(final.parent)
        tmp = _owned_stage(final)
    try:
        with storage_faults(final):
            yield tmp
            (tmp / OWNER_FILE).unlink()
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A staging folder names its owner, so that only a provably abandoned one is ever removed: a reader never
# cleans up, and a writer removes another's stage only when that process is gone from this very boot of
# this host, or (another host, or no owner file) when the stage is older than any build takes.
OWNER_FILE = ".iap-owner.json"
ABANDONED_AFTER_S = 24 * 3600


def _owned_stage(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / OWNER_FILE).write_text(json.dumps(_this_process()))
    return tmp


def _this_process() -> dict:
    import psutil
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
            "started": psutil.Process().create_time()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        import psutil
        return str(int(psutil.boot_time()))


def _abandoned(stage: Path) -> bool:
    import psutil
    try:
        owner = json.loads((stage / OWNER_FILE).read_text())
        age = time.time() - (stage / OWNER_FILE).stat().st_mtime
    except (OSError, ValueError):
        try:
            return time.time() - stage.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:
            return False  # gone already
    if (owner.get("host"), owner.get("boot")) != (socket.gethostname(), _boot_id()):
        return age > ABANDONED_AFTER_S
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["started"])) > 1e-3
    except psutil.NoSuchProcess:
        return True
    except (KeyError, TypeError, ValueError, psutil.Error):
        return age > ABANDONED_AFTER_S


def remove_abandoned_stages(folder: Path) -> None:
    """Remove the staging folders in `folder` whose owners are provably gone (killed builds); a live
    one may be a concurrent build, here or on another host sharing the disk."""
    for stage in Path(folder).glob(".*.tmp-*"):
        if stage.is_dir() and _abandoned(stage):
            shutil.rmtree(stage, ignore_errors=True)


def is_remote(url: str | os.PathLike) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def local_cache(*parts: str) -> Path:
    """A folder on this machine for what a remote output needs locally (presets, staged checkpoints):
    $IAP_CACHE_DIR, else ~/.cache/iap."""
    root = Path(os.environ.get("IAP_CACHE_DIR") or Path.home() / ".cache" / "iap")
    return root.joinpath(*parts)


def local_workdir(out: str) -> Path:
    """Where a run under `out` keeps its local-only files: `out` itself when local, else a cache folder
    named after the URL (so a re-run of the same remote output finds it again)."""
    if not is_remote(out):
        return Path(out)
    return local_cache("work", content_id(out.rstrip("/")))


def put_tree(local: Path, url: str, last: str | None = None) -> None:
    """Upload every file under `local` to `url`, the file named `last` (the commit marker) after all others
    have landed. The others go in one call: s3fs (any async fsspec store) sends them concurrently."""
    fs = filesystem(url)
    files = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file())
    base = url.rstrip("/")
    with storage_faults(url):
        first = [f for f in files if f != last]
        if first:
            fs.put([str(Path(local, f)) for f in first], [f"{base}/{f}" for f in first])
        if last in files:
            fs.put_file(str(Path(local, last)), f"{base}/{last}")


def get_tree(url: str, local: Path) -> Path:
    """Download everything under `url` into `local`, atomically: a half download is never at `local`."""
    fs = filesystem(url)
    tmp = _owned_stage(local)
    base = url.rstrip("/")
    try:
        with storage_faults(local):
            remotes = fs.find(base)
            locals_ = [tmp / remote[len(fs._strip_protocol(base)):].lstrip("/") for remote in remotes]
            for path in locals_:
                path.parent.mkdir(parents=True, exist_ok=True)
            if remotes:  # one call: concurrent on async stores
                fs.get(remotes, [str(p) for p in locals_])
    except BaseException:  # a half download is never left behind either
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / OWNER_FILE).unlink()
    try:
        os.rename(tmp, local)
    except OSError:  # another process finished the same download first
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def fetch_folder(url: str | os.PathLike, marker: str, kind: str) -> Path:
    """A local folder holding the output at `url`: itself when local, else a verified download cached by its
    URL (under local_cache(kind)). An output without its commit `marker` is missing or incomplete."""
    if not is_remote(url):
        return Path(url)
    url = str(url).rstrip("/")
    local = local_cache(kind, content_id(url), url.rsplit("/", 1)[-1])
    if not (local / marker).exists():
        check_reachable(url, kind.rstrip("s"))
        if not filesystem(url).exists(f"{url}/{marker}"):
            raise IapError(f"{kind.rstrip('s')} {url} is missing or incomplete (no {marker})")
        local.parent.mkdir(parents=True, exist_ok=True)
        get_tree(url, local)
    return local


def write_file(url: str, data: bytes) -> None:
    """A whole file at a local path or URL (parent folders made locally), seen old or new, never half."""
    if not is_remote(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(url), data)


def check_reachable(url: str, what: str = "output") -> None:
    """One message when the storage behind `url` cannot be used (no endpoint, no bucket, no credentials),
    before any work: a quick probe with no retries."""
    if not is_remote(url):
        return
    protocol = url.split("://", 1)[0]
    options = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1}}} \
        if protocol in ("s3", "s3a") else {}
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    try:
        fs.ls(bucket)
    except FileNotFoundError as e:
        raise IapError(f"{what} {url}: bucket '{bucket}' does not exist (create it first)") from e
    except Exception as e:  # noqa: BLE001 - every storage failure is one message, never a traceback
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IapError(f"{what} {url}: cannot use the storage ({first}); endpoint: {endpoint}; check "
                       "AWS_ENDPOINT_URL, the credentials and the bucket name") from e
