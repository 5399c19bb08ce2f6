"""Prefect tasks: thin wrappers adding retries, caching, result persistence, assets and artifacts
around one `iap` function each. Cache keys are the content ids the library computes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import fsspec
from prefect.settings import PREFECT_HOME

from iap.errors import IapError

# Results persist under $IAP_RESULTS_DIR (or PREFECT_HOME/iap-results) as JSON (a typed result: its class name
# and fields, so it loads back as that type).
RESULTS = Path(os.environ.get("IAP_RESULTS_DIR") or Path(PREFECT_HOME.value()) / "iap-results").resolve()
RESULTS.mkdir(parents=True, exist_ok=True)
PERSIST = {"persist_result": True, "result_storage": RESULTS, "result_serializer": "json"}
# Bumped whenever a task's result type changes (2: evaluation returns Metrics, training Trained), so a result
# an older iap persisted is recomputed instead of loading back as the wrong type.
RESULT_SCHEMA = 2


def not_a_user_error(_task, _task_run, state) -> bool:
    """Retry only what may pass on retry: a user error (IapError: a bad manifest, a wrong option) fails at
    once with its one message."""
    try:
        state.result()
    except IapError:
        return False
    except Exception:  # noqa: BLE001 - any other failure (storage, network) may be transient
        return True
    return True


def retrying(times: int, delay: float = 0) -> dict:
    """Task options: `times` retries `delay` s apart, never for a user error."""
    return {"retries": times, "retry_delay_seconds": delay, "retry_condition_fn": not_a_user_error}


LOCATIONS = ("out", "run_dir", "checkpoint", "cache_url", "snapshot_url")
# the output URLs a task result names, with the commit marker(s) a complete one holds: a re-run can recreate a
# folder (cache shards) before its commit, so the folder alone does not prove the output is there
OUTPUT_FIELDS = {"url": ("cache.json", "snapshot.json"), "checkpoint": ("state.json",),
                 "pipeline_dir": ("model_index.json",), "shards_url": (), "parts": (), "keys_url": (), "run_dir": ()}


def by_key(_context, parameters: dict) -> str:
    """Cache on the content id the flow passes as `key` (never on hashes of big inputs), per output
    location: the same data written under another `out` is another result, never a pointer into the
    first one's folder."""
    key = parameters["key"].replace("/", "-")  # a key is one result file name
    where = [f"schema-{RESULT_SCHEMA}", *(str(parameters[k]) for k in LOCATIONS if k in parameters)]
    if getattr(parameters.get("plan"), "url", None):
        where.append(parameters["plan"].url)
    key = f"{key}-{hashlib.sha256('|'.join(where).encode()).hexdigest()[:8]}"
    _forget_if_outputs_gone(key)
    return key


def _forget_if_outputs_gone(key: str) -> None:
    """A cached result whose outputs were deleted is dropped, so the task runs again: a cache must never
    answer with a pointer to nothing."""
    record = RESULTS / key
    try:
        result = json.loads(json.loads(record.read_text())["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record (or not ours to read): Prefect decides
    if not all(_complete(url, markers) for url, markers in _outputs(result)):
        record.unlink(missing_ok=True)


def _outputs(result) -> list[tuple[str, tuple[str, ...]]]:
    """(URL, commit markers) of the outputs a task result names; a bare string is an exported pipeline."""
    if isinstance(result, str):
        return [(result, OUTPUT_FIELDS["pipeline_dir"])]
    if isinstance(result, dict) and "__class__" in result:  # a typed result, as Prefect's JSON serializer writes it
        result = result.get("data")
    if not isinstance(result, dict):
        return []
    found = []
    for field, markers in OUTPUT_FIELDS.items():
        value = result.get(field)
        urls = [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
        found += [(u, markers) for u in urls if u]
    return found


def _complete(url: str, markers: tuple[str, ...]) -> bool:
    try:
        fs, _, _ = fsspec.get_fs_token_paths(url)
        if not markers:
            return fs.exists(url)
        return any(fs.exists(f"{url.rstrip('/')}/{m}") for m in markers)
    except (OSError, ValueError):  # storage unreachable: the task itself will say so
        return True


def asset_url(url: str) -> str:
    """An asset key for a storage URL: s3://... as is, local paths as file:// URIs."""
    if "://" in url:
        return url.rstrip("/")
    return "file://" + str(Path(url).resolve())
