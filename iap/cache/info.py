"""What a cache is: its config, its key, the record of a committed cache (cache.json) and how to open one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import fsspec
from pydantic import Field

from iap.config import StageConfig, launch_field
from iap.errors import IapError
from iap.system.ids import content_id


class CacheConfig(StageConfig):
    policy: Literal["recompute", "store", "store-sampled"] = "recompute"
    positions: int = Field(64, ge=1, description="store-sampled: query positions per layer per draw")
    draws: int = Field(2, ge=1, description="timestep/noise draws per sample")
    latent: Literal["mean", "sample"] = "mean"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    splits: list[str] = Field(default_factory=lambda: ["train", "val"])
    seed: int = 0
    batch_size: int | None = launch_field(None, ge=1, description="samples per VAE/UNet pass (None: 32 on a GPU, 4 on a CPU)")
    # how shards are spread (Prefect task runners); none of it changes the cache key
    task_runner: Literal["thread", "process", "dask", "ray"] = launch_field(
        "thread", description="thread: one GPU; process, dask, ray: one GPU per worker (dask / ray: the [dask] / "
                              "[ray] extras)")
    workers: int | None = launch_field(None, ge=1, description="parallel shards (None: one per GPU, else the "
                                                               "runner's default)")
    runner_address: str | None = launch_field(None, description="Dask scheduler or Ray cluster address (None: local)")

    max_gb: float | None = launch_field(500.0, gt=0, description="stop before writing anything when the projected cache "
                                                       "size exceeds this many GB (None: no limit)")


@dataclass
class CacheInfo:
    key: str
    url: str
    snapshot_id: str
    base_fingerprint: str
    cross_attention_dim: int
    config: dict
    shards: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{name, rows, bytes}]
    bytes: int = 0
    seconds: float = 0.0
    cached: bool = False

    @property
    def policy(self) -> str:
        return self.config["policy"]


def cache_key(snapshot_id: str, base_fingerprint: str, cfg: CacheConfig) -> str:
    return content_id(f"{snapshot_id}:{base_fingerprint}:{cfg.identity()}")


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    """The filesystem of a cache URL (local or s3://)."""
    return fsspec.get_fs_token_paths(url)[0]


def open_cache(url: str, snapshot_id: str | None = None, base_fingerprint: str | None = None) -> CacheInfo:
    """A committed cache; refuses one built for another snapshot or base model."""
    fs = filesystem(url)
    if not fs.exists(f"{url}/cache.json"):
        raise IapError(f"cache {url} does not exist or is incomplete (no cache.json); run iap precompute")
    with fs.open(f"{url}/cache.json", "r") as f:
        info = CacheInfo(**{**json.load(f), "cached": True})
    if snapshot_id and info.snapshot_id != snapshot_id:
        raise IapError(f"cache {url} was built for snapshot {info.snapshot_id}, not {snapshot_id}")
    if base_fingerprint and info.base_fingerprint != base_fingerprint:
        raise IapError(f"cache {url} was built for base model {info.base_fingerprint}, not {base_fingerprint}")
    return info
