"""The frozen base shared by the stages of one process (frozen weights are safe to share): precompute, train
and evaluate of a pipeline load it once, whether they run as Prefect tasks or in-process."""

from __future__ import annotations

import logging
import threading

from iap.models.base import FrozenBase, load_base
from iap.system.runtime import detect

log = logging.getLogger("iap.models")
_lock = threading.Lock()
_loaded: dict[tuple, FrozenBase] = {}


def shared_base(source: str, precision: str = "no") -> FrozenBase:
    """Load once per process on this process's device, in the run's precision (TrainConfig.mixed_precision),
    shared by precompute, train and evaluate. Serialised: diffusers' meta-device init is not thread-safe, and
    mapped tasks run in threads."""
    runtime = detect(precision)
    with _lock:
        if (source, runtime) not in _loaded:
            _loaded.clear()  # keep one base in memory
            log.info("loading %s on %s", source, runtime)  # which GPU this worker took, or that it has none
            _loaded[(source, runtime)] = load_base(source, runtime)
        return _loaded[(source, runtime)]
