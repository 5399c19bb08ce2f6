"""Prefect tasks: thin wrappers adding retries, caching, result persistence, assets and artifacts
around one `iap` function each. Cache keys are the content ids the library computes."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.settings import PREFECT_HOME

# Results persist under $IAP_RESULTS_DIR (or PREFECT_HOME/iap-results) as JSON.
RESULTS = Path(os.environ.get("IAP_RESULTS_DIR") or Path(PREFECT_HOME.value()) / "iap-results").resolve()
RESULTS.mkdir(parents=True, exist_ok=True)
PERSIST = {"persist_result": True, "result_storage": RESULTS, "result_serializer": "json"}


def by_key(_context, parameters: dict) -> str:
    """Cache on the content id the flow passes as `key` (never on hashes of big inputs)."""
    return parameters["key"].replace("/", "-")  # a key is one result file name


def asset_url(url: str) -> str:
    """An asset key for a storage URL: s3://... as is, local paths as file:// URIs."""
    if "://" in url:
        return url.rstrip("/")
    return "file://" + str(Path(url).resolve())
