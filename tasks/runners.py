"""Task runners for mapped work (precompute shards) by name: local threads or processes, or a Dask /
Ray cluster through the official prefect-dask / prefect-ray integrations when they are installed."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from iap.errors import IapError

RUNNERS = ("thread", "process", "dask", "ray")


def task_runner(name: str = "thread", workers: int | None = None, address: str | None = None) -> TaskRunner:
    """A task runner; `address` is a Dask scheduler or Ray cluster address (None: a local one)."""
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if name == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if name == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise IapError("task runner 'dask' needs prefect-dask: pip install prefect-dask") from e
        return DaskTaskRunner(address=address) if address else DaskTaskRunner(
            cluster_kwargs={"n_workers": workers or 2, "processes": True})
    if name == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as e:
            raise IapError("task runner 'ray' needs prefect-ray: pip install prefect-ray") from e
        return RayTaskRunner(address=address)
    raise IapError(f"unknown task runner '{name}'; choose one of {', '.join(RUNNERS)}")
