"""Content ids: one rule (`launch_field`) says which config fields are outside every id, and the ids of
given inputs never move (caches, snapshots and runs made by earlier versions stay valid)."""

from __future__ import annotations

import pytest

from iap.cache.info import CacheConfig, cache_key
from iap.config import StageConfig, TrainConfig
from iap.data.download import DownloadConfig, download_id
from iap.data.snapshot import FilterConfig
from iap.evaluation.config import EvalConfig


def test_ids_of_given_inputs_are_those_of_earlier_versions():
    assert cache_key("snap", "fp", CacheConfig()) == "2ecb26c4ac3ed7b1"
    assert cache_key("snap", "fp", CacheConfig(policy="store", batch_size=8, workers=2, max_gb=1)) == "2e9b8c79b77e1e66"
    assert TrainConfig().identity() == "643c6e69402b1eb9"
    assert TrainConfig(steps=5, lr=1e-3, num_processes=2).identity() == "451420e7c91ee673"
    assert download_id("fp", DownloadConfig()) == "10a06d328d948881"
    assert download_id("fp", DownloadConfig(thread_count=4, image_size=64)) == "ca33ac0a572ef81f"
    # issue 26 changed the default filter (normalisation v1, junk rules, the per-caption cap): a new id, as it
    # must be, since the same shards now give another snapshot; before it: b09ac12e5d5c01e3
    assert FilterConfig().identity() == "09f2c51ea7672248"
    assert EvalConfig().identity() == "74286ab95e88a175"


LAUNCH = {
    CacheConfig: {"batch_size", "task_runner", "workers", "runner_address", "max_gb"},
    TrainConfig: {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_processes", "accelerate_config",
                  "report_to"},
    DownloadConfig: {"distributor", "processes_count", "thread_count", "subjob_size", "max_shard_retry"},
    FilterConfig: set(),
    EvalConfig: set(),
}


@pytest.mark.parametrize("cls", list(LAUNCH), ids=lambda c: c.__name__)
def test_one_marker_says_which_fields_are_outside_the_id(cls: type[StageConfig]):
    assert cls.launch_fields() == LAUNCH[cls]
    default = cls()
    for name, field in cls.model_fields.items():
        value = _another_value(field.annotation, getattr(default, name))
        if value is None:
            continue
        changed = cls.model_validate({**default.model_dump(), name: value})
        same = changed.identity() == default.identity()
        assert same == (name in LAUNCH[cls]), name


def _another_value(annotation, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    return None
