"""Tasks of the precompute stage: one per cache shard (mapped), then the commit."""

from __future__ import annotations

from prefect import task
from prefect.assets import materialize

from iap.cache.budget import check_budget
from iap.cache.info import CacheInfo
from iap.cache.writer import CachePlan, commit_cache, precompute_shard
from iap.models.shared import shared_base
from iap.system.profile import stage
from tasks import PERSIST, by_key, retrying
from tasks.data import PLACEHOLDER_ASSET


@task
def budget_check(plan: CachePlan, base: str, precision: str = "no") -> float:
    """The projected cache size; fails (not retried: a user error) when it exceeds the config's max_gb."""
    with stage("load base"):
        model = shared_base(base, precision)
    return check_budget(plan.config, plan.rows, model)


@task(cache_key_fn=by_key, **retrying(2, 5), **PERSIST)
def cache_shard(key: str, plan: CachePlan, split: str, rel: str, base: str, precision: str = "no") -> dict:
    """Compute and commit one shard; `key` is '<cache key>/<shard>'."""
    shared_base(base, precision)  # loading is its own stage, once per process
    with stage("precompute") as record:
        info = precompute_shard(plan, split, rel, shared_base(base, precision))
        record["samples"] = info["rows"]
    return info


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **retrying(2, 5), **PERSIST)
def commit(key: str, plan: CachePlan, shards: list[dict], base: str, seconds: float, precision: str = "no") -> CacheInfo:
    """Write cache.json (the commit point); `key` is the cache key."""
    needs_base = plan.config.policy != "recompute"
    return commit_cache(plan, shards, shared_base(base, precision) if needs_base else None, seconds)
