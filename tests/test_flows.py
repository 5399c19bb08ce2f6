"""Flows in-process against Prefect's ephemeral server: retries of transient storage failures, the data
flow per folder and per distributor, precompute per task runner."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import DOWNLOAD, FILTER, assert_same_cache_shards, free_port, start_moto

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_transient_s3_outage_is_retried_and_the_flow_completes(harness, served, monkeypatch):
    import fsspec
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.data import iap_data

    server, port = start_moto(monkeypatch, free_port())
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    fs = fsspec.filesystem("s3")
    fs.mkdir("flaky")
    fs.put(str(served), "flaky/in/manifest.parquet")
    server.stop()  # the outage: the flow's first task finds no S3 server ...
    restarted = []

    def restart():  # ... which is back within the tasks' retry delay (5 s)
        time.sleep(2)
        again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        again.start()
        restarted.append(again)

    threading.Thread(target=restart, daemon=True).start()
    state = iap_data("s3://flaky/in/manifest.parquet", "s3://flaky/data", DOWNLOAD, FILTER, return_state=True)
    try:
        assert state.is_completed(), state.message
        snapshot = state.result()
        assert snapshot.rows["total"] > 0
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
                state.state_details.flow_run_id])))
        retried = [t for t in runs if t.run_count > 1]
        assert retried, [(t.name, t.run_count) for t in runs]
    finally:
        for s in restarted:
            s.stop()


def _data_flow(served, out, distributor: str):
    from flows.data import iap_data
    return iap_data(str(served), str(out), DOWNLOAD.model_copy(update={"distributor": distributor}), FILTER)


def _check(snapshot, expected_id: str, folder) -> None:
    assert snapshot.id == expected_id
    assert Path(snapshot.url).is_relative_to(folder), (folder, snapshot.url)
    assert Path(snapshot.url, "snapshot.json").exists()


def test_data_flow_into_another_folder_gives_the_same_snapshot_there(harness, served, local_run, tmp_path):
    """The same manifest through the iap-data flow into two folders: the library run's snapshot id, and each
    result under its own folder (task caches are per output location, not pointers into the first)."""
    _, _, expected = local_run
    for folder in (tmp_path / "a", tmp_path / "b"):
        _check(_data_flow(served, folder, "multiprocessing"), expected.id, folder)


def test_a_deleted_output_folder_is_recomputed_not_served_from_the_task_cache(harness, served, tmp_path):
    """Prefect's cached results point into `out`; once it is deleted they must not be used."""
    import shutil

    import pyarrow.parquet as pq
    few = tmp_path / "few.parquet"
    pq.write_table(pq.read_table(served).slice(0, 6), few)
    first = _data_flow(few, tmp_path / "out", "multiprocessing")
    shutil.rmtree(tmp_path / "out")
    _check(_data_flow(few, tmp_path / "out", "multiprocessing"), first.id, tmp_path / "out")


def test_a_deleted_cache_is_committed_again_not_served_from_the_task_cache(harness, grouped_snapshot_small, tiny_dir,
                                                                          tmp_path):
    """The shards of a re-run recreate the cache folder before its commit: the cached commit result must still
    be dropped, since the folder has no cache.json (its commit marker) until the commit runs again."""
    import shutil

    from flows.precompute import iap_precompute
    from iap.cache.info import CacheConfig, open_cache
    cfg = CacheConfig(draws=1, splits=["val"])
    first = iap_precompute(grouped_snapshot_small.url, str(tiny_dir / "base"), str(tmp_path / "cache"), cfg)
    shutil.rmtree(tmp_path / "cache")
    again = iap_precompute(grouped_snapshot_small.url, str(tiny_dir / "base"), str(tmp_path / "cache"), cfg)
    assert again.key == first.key
    assert open_cache(again.url).key == first.key


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (.ci/run installs it from Debian)")
def test_data_flow_with_pyspark_in_local_mode_gives_the_same_snapshot(harness, served, local_run, tmp_path,
                                                                     monkeypatch):
    """img2dataset's pyspark distributor on the local SparkSession it starts (pyspark comes with the dev
    install). Its Python workers must run this interpreter, venv activated or not: `python3` on PATH lacked
    img2dataset."""
    _, _, expected = local_run
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if Path(p) != Path(sys.executable).parent))
    _check(_data_flow(served, tmp_path, "pyspark"), expected.id, tmp_path)


def test_data_flow_with_ray_on_a_local_instance_gives_the_same_snapshot(harness, served, local_run, tmp_path):
    """img2dataset's ray distributor: one Ray task per shard on a local Ray instance."""
    import ray
    _, _, expected = local_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _check(_data_flow(served, tmp_path, "ray"), expected.id, tmp_path)
    finally:
        ray.shutdown()


@pytest.mark.parametrize("policy", ["recompute", "store", "store-sampled"])
def test_precompute_shards_are_byte_identical_on_threads_processes_and_in_sequence(
        policy, harness, grouped_snapshot_small, tiny_dir, tmp_path):
    """Cache shards mapped over 2 threads or 2 worker processes: same key and the same bytes as one shard after
    the other. With store policies, concurrent UNet passes must not see each other's captured tensors."""
    from flows.precompute import iap_precompute
    from iap.cache.info import CacheConfig
    from iap.cache.writer import precompute as sequential
    from iap.data.snapshot import open_snapshot
    from iap.models import load_base
    from iap.models.base import weights_fingerprint
    base = str(tiny_dir / "base")
    cfg = CacheConfig(policy=policy, draws=2, positions=8, workers=2)
    infos = {runner: iap_precompute(grouped_snapshot_small.url, base, str(tmp_path / runner),
                                    cfg.model_copy(update={"task_runner": runner}))
             for runner in ("thread", "process")}
    infos["sequential"] = sequential(open_snapshot(grouped_snapshot_small.url), lambda: load_base(base),
                                     weights_fingerprint(base), str(tmp_path / "sequential"), cfg, log=lambda _: None)
    assert_same_cache_shards(infos, "sequential")


def test_a_user_error_inside_a_task_is_not_retried(harness, tmp_path):
    """A missing manifest is the user's to fix: the task fails once, with the one message, no retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.data import iap_data
    from iap.errors import IapError
    state = iap_data(str(tmp_path / "missing.parquet"), str(tmp_path / "data"), DOWNLOAD, FILTER, return_state=True)
    assert state.is_failed()
    with pytest.raises(IapError, match="missing.parquet"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            state.state_details.flow_run_id])))
    assert runs and all(t.run_count == 1 for t in runs), [(t.name, t.run_count) for t in runs]
