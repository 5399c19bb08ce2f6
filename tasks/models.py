"""Model loading shared by the tasks of one process (frozen weights are safe to share)."""

from __future__ import annotations

import threading

from iap.models import BaseModel, load_base

_lock = threading.Lock()
_loaded: dict[str, BaseModel] = {}


def base_model(source: str) -> BaseModel:
    """Load once per process. Serialised: diffusers' meta-device init is not thread-safe, and mapped
    tasks run in threads."""
    with _lock:
        if source not in _loaded:
            _loaded.clear()  # keep one base in memory
            _loaded[source] = load_base(source)
        return _loaded[source]
