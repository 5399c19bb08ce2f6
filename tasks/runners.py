"""Task runners for mapped work (precompute shards) by name, one GPU per worker: local threads or processes,
or a Dask / Ray cluster through the official prefect-dask / prefect-ray integrations (the `dask` and `ray`
extras).

GPUs: the process runner and a local Dask cluster start one worker per GPU by default and number them
(`IAP_GPU`, read by `iap.system.runtime`: worker i computes on cuda:i); a Ray task asks for one GPU when the
cluster has any, and Ray shows it only that one. Threads share one process and so one GPU. The workers of a
Dask cluster at an address are the user's: start one per GPU (dask-cuda's `dask cuda worker` does)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from iap.errors import IapError

RUNNERS = ("thread", "process", "dask", "ray")
_CLAIMS: list = []  # a process-pool worker's GPU claim, held for its life


def task_runner(name: str = "thread", workers: int | None = None, address: str | None = None) -> TaskRunner:
    """A task runner; `address` is a Dask scheduler or Ray cluster address (None: a local one)."""
    if name not in RUNNERS:
        raise IapError(f"unknown task runner '{name}'; choose one of {', '.join(RUNNERS)}")
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    gpus = _gpu_count()
    if name == "process":
        return ProcessPoolTaskRunner(max_workers=workers or gpus or None, initializer=claim_gpu, initargs=(gpus,))
    if name == "dask":
        DaskTaskRunner = _integration("prefect_dask", "DaskTaskRunner", "dask")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_class=local_dask_cluster,
                              cluster_kwargs={"workers": workers or gpus or 2, "gpus": gpus})
    RayTaskRunner = _integration("prefect_ray", "RayTaskRunner", "ray")
    local = {"num_cpus": workers, "include_dashboard": False} if workers else {"include_dashboard": False}
    return RayTaskRunner(address=address, init_kwargs={} if address else local)


@contextmanager
def one_gpu_per_task(name: str) -> Iterator[None]:
    """Tasks submitted inside ask their runner for a GPU each, where the runner schedules GPUs (Ray: without
    one, Ray hides every GPU from the task). Enter it inside the flow that runs on the runner."""
    if name == "ray":
        import ray
        from prefect_ray.context import remote_options
        if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1:
            with remote_options(num_gpus=1):
                yield
            return
    yield


def claim_gpu(gpus: int) -> None:
    """Run once in each process-pool worker as it starts: take the first GPU no living worker on this machine
    holds (an flock on a file per GPU, released when the worker exits), else share one by process id."""
    if not gpus:
        return
    folder = Path(tempfile.gettempdir(), f"iap-gpu-claims-{os.getuid()}")
    folder.mkdir(exist_ok=True)
    for index in range(gpus):
        handle = open(folder / f"gpu-{index}", "a")  # noqa: SIM115 (held open: the claim lives with the process)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIMS.append(handle)
        os.environ["IAP_GPU"] = str(index)
        return
    os.environ["IAP_GPU"] = str(os.getpid() % gpus)


def local_dask_cluster(workers: int, gpus: int):
    """A Dask cluster on this machine: `workers` processes of one thread each, worker i on GPU i (round robin).
    Like dask-cuda's LocalCUDACluster, but it also runs here without GPUs (and without pynvml)."""
    from distributed import Nanny, Scheduler, SpecCluster

    def worker(i: int) -> dict:
        env = {"IAP_GPU": str(i % gpus)} if gpus else {}
        return {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": env}}
    saved = dict(os.environ)
    try:
        return SpecCluster(workers={i: worker(i) for i in range(workers)},
                           scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}})
    finally:  # Dask's nanny writes its workers' limits (OMP_NUM_THREADS=1, ...) into this process's environment
        os.environ.clear()  # before it spawns them: every later child of the flow (torchrun) would inherit them
        os.environ.update(saved)


def _gpu_count() -> int:
    from iap.system.runtime import gpu_count  # imports torch: only where a GPU-aware runner is built
    return gpu_count()


def _integration(module: str, name: str, extra: str):
    try:
        return getattr(__import__(module), name)
    except ImportError as e:
        raise IapError(f"task runner '{extra}' needs {module.replace('_', '-')}: install the '{extra}' extra: "
                       f"pip install -e '.[{extra}]'") from e
