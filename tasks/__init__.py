"""Prefect tasks: thin wrappers adding retries, caching, result persistence, assets and artifacts
around one `iap` function each. Cache keys are the content ids the library computes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefect.settings import PREFECT_HOME

# Results persist under $IAP_RESULTS_DIR (or PREFECT_HOME/iap-results) as JSON.
RESULTS = Path(os.environ.get("IAP_RESULTS_DIR") or Path(PREFECT_HOME.value()) / "iap-results").resolve()
RESULTS.mkdir(parents=True, exist_ok=True)
PERSIST = {"persist_result": True, "result_storage": RESULTS, "result_serializer": "json"}


LOCATIONS = ("out", "run_dir", "checkpoint", "cache_url", "snapshot_url")


def by_key(_context, parameters: dict) -> str:
    """Cache on the content id the flow passes as `key` (never on hashes of big inputs), per output
    location: the same data written under another `out` is another result, never a pointer into the
    first one's folder."""
    key = parameters["key"].replace("/", "-")  # a key is one result file name
    where = [str(parameters[k]) for k in LOCATIONS if k in parameters]
    if getattr(parameters.get("plan"), "url", None):
        where.append(parameters["plan"].url)
    return f"{key}-{hashlib.sha256('|'.join(where).encode()).hexdigest()[:8]}" if where else key


def asset_url(url: str) -> str:
    """An asset key for a storage URL: s3://... as is, local paths as file:// URIs."""
    if "://" in url:
        return url.rstrip("/")
    return "file://" + str(Path(url).resolve())
