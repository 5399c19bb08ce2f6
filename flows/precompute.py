"""iap-precompute: snapshot + base model -> cache, mapped over the snapshot's shards."""

from __future__ import annotations

import time

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from iap.cache.info import CacheConfig, CacheInfo, open_cache
from iap.cache.writer import CachePlan, plan_cache
from iap.data.snapshot import open_snapshot
from iap.errors import IapError
from iap.models.base import weights_fingerprint
from tasks import artifacts, asset_url
from tasks.cache import budget_check, cache_shard, commit
from tasks.runners import one_gpu_per_task, task_runner


@flow(name="iap-precompute-shards")
def _cache_shards(plan: CachePlan, base: str, precision: str) -> list[dict]:
    """The mapped shard tasks, in a subflow so the cache config picks their task runner."""
    with one_gpu_per_task(plan.config.task_runner):
        futures = cache_shard.map([f"{plan.key}/{split}/{rel}" for split, rel in plan.shards], unmapped(plan),
                                  [s for s, _ in plan.shards], [r for _, r in plan.shards], unmapped(base),
                                  unmapped(precision))
    progress = create_progress_artifact(0.0, key="iap-precompute-progress", description=f"cache shards of {plan.key}")
    shards = []
    for future in futures:
        shards.append(future.result())
        update_progress_artifact(progress, 100.0 * len(shards) / len(futures))
    return shards


@flow(name="iap-precompute", log_prints=True)
def iap_precompute(snapshot: str, base: str, out: str, cache: CacheConfig = CacheConfig(),
                   precision: str = "no") -> CacheInfo:
    """`precision`: the run's (TrainConfig.mixed_precision); on a GPU the frozen base runs in it."""
    plan = plan_cache(open_snapshot(snapshot), weights_fingerprint(base), out, cache)
    try:
        return open_cache(plan.url)  # same key: nothing to compute
    except IapError:
        pass
    budget_check(plan, base, precision)  # before anything is written
    started = time.perf_counter()
    runner = task_runner(cache.task_runner, cache.workers, cache.runner_address)
    shards = _cache_shards.with_options(task_runner=runner)(plan, base, precision)
    info = commit.with_options(assets=[asset_url(plan.url)], asset_deps=[asset_url(snapshot)])(
        plan.key, plan, shards, base, time.perf_counter() - started, precision)
    samples = sum(s["rows"] for s in shards)
    artifacts.metrics({"cache_key": plan.key, "policy": cache.policy, "samples": samples,
                       "megabytes": info.bytes / 1e6, "seconds": info.seconds,
                       "samples_per_second": samples / max(info.seconds, 1e-9)}, f"cache {plan.url}")
    return info
