"""The real user path: a Prefect server and a process worker on 127.0.0.1, deployments from
deployments/prefect.yaml, and `prefect deployment run iap-train/smoke --watch`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`iap server up` (server, pool, every deployment, worker) with this session's state folders."""
    from unittest import mock

    from iap.cli.server import down, local_env, up
    home, out = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("iap-out")
    port = free_port()
    own = {"PREFECT_HOME": str(home), "IAP_RESULTS_DIR": str(home / "results"), "HF_HUB_OFFLINE": "1",
           "IAP_MANIFEST": str(out / "manifest.parquet")}  # does not exist: the refresh schedule stays paused
    with mock.patch.dict(os.environ, own):
        state = up(port, str(out))
        env = local_env(port, str(out)) | {"IAP_REFRESH": state["refresh"]}
    yield env, out
    down(str(home))


def prefect(env: dict, *args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)}: {r.stdout[-2000:]} {r.stderr[-2000:]}")
    return r


def run_smoke(env: dict, *params: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = prefect(env, "deployment", "run", "iap-train/smoke", *params, "--watch", "--watch-timeout", "900",
                check=False, timeout=960)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
    flow_run = json.loads(prefect(env, "flow-run", "inspect", run_id, "-o", "json").stdout)
    return r, flow_run


def api(env: dict, method: str, path: str, body: dict | None = None):
    return httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30).json()


def asset_events(env: dict) -> list[dict]:
    page = api(env, "POST", "/events/filter", {"filter": {"event": {"prefix": ["prefect.asset.materialization"]}},
                                               "limit": 50})
    events = list(page["events"])
    while page.get("next_page"):
        page = httpx.get(page["next_page"], timeout=30).json()
        events += page["events"]
    return events


@pytest.fixture(scope="module")
def smoke_runs(server):
    env, out = server
    first = run_smoke(env)
    second = run_smoke(env)
    return env, out, first, second


def test_smoke_deployment_completes_with_checkpoint_and_registry_entry(smoke_runs):
    env, out, (r, flow_run), _ = smoke_runs
    assert r.returncode == 0, r.stdout[-3000:]
    assert flow_run["state"]["type"] == "COMPLETED"
    checkpoints = list((out / "smoke" / "runs").glob("*/checkpoints/latest"))
    assert len(checkpoints) == 1
    entries = [json.loads(p.read_text()) for p in (out / "smoke" / "registry" / "entries").glob("*.json")]
    assert len(entries) == 1 and entries[0]["lineage"]["flow_run_id"] == flow_run["id"]
    assert entries[0]["metrics"]["heldout_loss"] < entries[0]["metrics"]["untrained_heldout_loss"]


def test_second_run_reuses_snapshot_and_cache(smoke_runs):
    env, _, _, (r, flow_run) = smoke_runs
    assert r.returncode == 0
    runs = api(env, "POST", "/task_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 200})
    latest: dict[str, dict] = {}
    for t in runs:  # newest first: the second run's task runs
        name = t["name"].rsplit("-", 1)[0]
        latest.setdefault(name, t)
    for name in ("download_shards", "filter_snapshot", "train_encoder", "export"):
        assert latest[name]["state"]["name"] == "Cached", (name, latest[name]["state"])
    # the cache flow saw a committed cache and mapped no shard work at all the second time
    shard_runs = [t for t in runs if t["name"].startswith("cache_shard")]
    assert len(shard_runs) == len({t["name"] for t in shard_runs}) and shard_runs


def test_artifacts_and_asset_lineage(smoke_runs):
    env, out, (_, flow_run), _ = smoke_runs
    keys = {a["key"] for a in api(env, "POST", "/artifacts/filter", {"limit": 200})}
    assert {"iap-funnel", "iap-metrics", "iap-train-progress", "iap-loss-curve", "iap-lineage"} <= keys
    events = asset_events(env)
    upstream = {e["resource"]["prefect.resource.id"]: {r["prefect.resource.id"] for r in e["related"]
                                                       if r.get("prefect.resource.role") == "asset"} for e in events}
    snapshots = [k for k in upstream if "/smoke/data/snapshots/" in k]
    assert snapshots and any("/smoke/data/raw-" in u for u in upstream[snapshots[0]])
    caches = [k for k in upstream if "/smoke/cache/cache-" in k]
    assert caches and upstream[caches[0]] & set(snapshots)
    runs = [k for k in upstream if "/smoke/runs/" in k]
    assert runs and any("/smoke/cache/cache-" in u for u in upstream[runs[0]])
    assert (Path(next(iter(out.glob("smoke/runs/*")))) / "loss_curve.png").exists()


def test_refresh_without_a_manifest_is_deployed_paused_and_says_so(server):
    env, _ = server
    assert "iap-data/refresh paused" in env["IAP_REFRESH"] and "does not exist" in env["IAP_REFRESH"]
    schedules = api(env, "GET", "/deployments/name/iap-data/refresh")["schedules"]
    assert schedules and not any(s["active"] for s in schedules)


def test_bad_parameter_fails_at_start_with_the_message_and_no_outputs(server, tmp_path):
    env, _ = server
    bad_out = tmp_path / "bad"
    r, flow_run = run_smoke(env, "-p", f"out={bad_out}", "-p", f"base={tmp_path / 'no-such-model'}")
    assert r.returncode == 1
    assert flow_run["state"]["type"] == "FAILED"
    assert "does not exist" in flow_run["state"]["message"]
    assert not bad_out.exists() or not any(bad_out.iterdir())


def test_server_up_after_a_crash_replaces_the_old_worker(server):
    """Issue 30, finding 13: after a server crash, `up` started a second worker beside the first, and `down`
    then stopped only the second. (Last in this module: it restarts the module's server.)"""
    import signal
    from unittest import mock

    import psutil

    from iap.cli.server import up

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    env, out = server
    home = Path(env["PREFECT_HOME"])
    first = json.loads((home / "iap-server.json").read_text())
    os.killpg(first["server"], signal.SIGKILL)  # the server crashes; its worker runs on
    assert not gone(first["worker"])
    port = int(env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0])
    keep = ("PREFECT_HOME", "IAP_RESULTS_DIR", "HF_HUB_OFFLINE", "IAP_MANIFEST")
    with mock.patch.dict(os.environ, {k: env[k] for k in keep}):
        second = up(port, str(out))
    assert gone(first["worker"]) and gone(first["server"])
    assert not gone(second["worker"]) and not gone(second["server"])
    assert json.loads((home / "iap-server.json").read_text())["worker"] == second["worker"]
