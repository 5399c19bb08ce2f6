"""Precompute's task runners on the real engines, as local clusters on 127.0.0.1: each worker of the process
pool and of a local Dask cluster, and each task on a local Ray instance, computes on its own GPU (the device
count faked to 2: this machine has none), and the shards Dask and Ray compute are byte-identical to the
thread runner's."""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import pytest
from prefect import flow, task

from tests.helpers import assert_same_cache_shards

pytestmark = pytest.mark.e2e  # clusters and flows: out of the inner loop


@task
def gpu_of_this_worker(i: int, folder: str) -> tuple[str, str]:
    """The device `detect` picks in a worker with 2 (faked) visible GPUs, after both tasks have started: so
    the two tasks run at once, on two workers."""
    from iap.system.runtime import detect
    Path(folder, str(i)).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    with mock.patch("torch.cuda.is_available", return_value=True), mock.patch("torch.cuda.set_device"), \
            mock.patch("torch.cuda.device_count", return_value=len(visible.split(",")) if visible else 2):
        return str(detect().device), visible


def _gpus_of_two_tasks(name: str, folder: Path) -> list[tuple[str, str]]:
    from tasks.runners import one_gpu_per_task, task_runner

    @flow
    def two_tasks() -> list[tuple[str, str]]:
        with one_gpu_per_task(name):
            futures = gpu_of_this_worker.map([0, 1], str(folder))
        return sorted(f.result() for f in futures)
    folder.mkdir()
    return two_tasks.with_options(task_runner=task_runner(name))()


@pytest.fixture(scope="module")
def ray_with_two_gpus():
    """A local Ray instance that declares 2 GPUs (Ray schedules them; nothing computes on them)."""
    import ray
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("name", ["process", "dask"])
def test_each_worker_of_a_local_pool_computes_on_its_own_gpu(name, tmp_path, monkeypatch):
    """With no GPU decided per worker, every worker computed on cuda:0."""
    monkeypatch.setattr("iap.system.runtime.gpu_count", lambda: 2)  # what the parent sees: 2 workers, 2 GPUs
    environ = dict(os.environ)
    assert _gpus_of_two_tasks(name, tmp_path / "started") == [("cuda:0", ""), ("cuda:1", "")]
    assert dict(os.environ) == environ  # Dask's nanny had left OMP_NUM_THREADS=1 for every later child


def test_each_ray_task_asks_for_a_gpu_and_sees_only_its_own(ray_with_two_gpus, tmp_path):
    """Without asking, Ray hid every GPU from the task (CUDA_VISIBLE_DEVICES='') and it ran on the CPU."""
    assert _gpus_of_two_tasks("ray", tmp_path / "started") == [("cuda:0", "0"), ("cuda:0", "1")]


def test_precompute_on_dask_and_ray_is_byte_identical_to_threads(ray_with_two_gpus, grouped_snapshot_small,
                                                                 tiny_dir, tmp_path):
    """Shards on a local Dask cluster (2 worker processes) and on Ray (2 workers; the declared GPUs are
    requested and, on this CPU machine, unused): the same cache key and bytes as on threads. Dask and Ray run
    torch with one CPU thread per worker (OMP_NUM_THREADS=1), and a CPU's float sums depend on the thread
    count (1 ulp of float16 here), so the threads run with one too."""
    import torch

    from flows.precompute import iap_precompute
    from iap.cache.info import CacheConfig
    cfg = CacheConfig(policy="store", draws=2, positions=8, workers=2)

    def precompute(runner: str):
        return iap_precompute(grouped_snapshot_small.url, str(tiny_dir / "base"), str(tmp_path / runner),
                              cfg.model_copy(update={"task_runner": runner}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        infos = {"thread": precompute("thread")}
    finally:
        torch.set_num_threads(threads)
    infos.update({runner: precompute(runner) for runner in ("dask", "ray")})
    assert_same_cache_shards(infos, "thread")
