"""A local Prefect setup for the real user path: server + process pool + deployments + worker.

Shells out to the `prefect` CLI (the library itself never imports Prefect). State lives in
PREFECT_HOME (default ./.prefect) and pids in PREFECT_HOME/iap-server.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import fsspec

from iap.errors import IapError
from iap.system.storage import is_remote

ROOT = Path(__file__).resolve().parents[2]  # the repository (deployments/, .prefect/)


def local_env(port: int, out: str, pool: str = "local-pool") -> dict[str, str]:
    """The environment of the server, worker and deployments; `out` (the deployments' output root) is a
    local folder, made absolute, or a URL kept as it is."""
    out = str(out).rstrip("/") if is_remote(out) else str(Path(out).resolve())
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2", "PWD": str(ROOT), "IAP_CHECKOUT": str(ROOT),
            "IAP_OUT": out, "IAP_WORK_POOL": pool, "IAP_GPU_WORK_POOL": pool,
            "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.setdefault("IAP_MANIFEST", f"{out}/manifest.parquet")
    return env


def _prefect(env: dict, *args: str, timeout: int = 120) -> str:
    exe = str(Path(sys.executable).with_name("prefect"))
    r = subprocess.run([exe, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise IapError(f"prefect {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def up(port: int = 4200, out: str = "runs/prefect", pool: str = "local-pool", manifest: str | None = None) -> dict:
    """Server, pool, every deployment and a worker. `iap-data/refresh` is scheduled only when its manifest
    (`manifest`, else $IAP_MANIFEST) exists; otherwise its schedule is paused, and `refresh` says so."""
    env = local_env(port, out, pool)
    if manifest:
        env["IAP_MANIFEST"] = manifest
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    _stop_recorded(Path(env["PREFECT_HOME"]) / "iap-server.json")  # what a crashed setup left running
    exe = str(Path(sys.executable).with_name("prefect"))
    logs = Path(env["PREFECT_HOME"])
    server = subprocess.Popen([exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    _prefect(env, "server", "status", "--wait", "--timeout", "90")
    _prefect(env, "work-pool", "create", pool, "--type", "process", "--overwrite")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    worker = subprocess.Popen([exe, "worker", "start", "--pool", pool, "--type", "process"], env=env,
                              stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    state = {"server": server.pid, "worker": worker.pid, "started": {str(p.pid): _started(p.pid) for p in (server, worker)},
             "api": env["PREFECT_API_URL"], "home": env["PREFECT_HOME"],
             "refresh": _refresh_schedule(env)}
    (logs / "iap-server.json").write_text(json.dumps(state))
    return state


def _refresh_schedule(env: dict) -> str:
    """Leave iap-data/refresh's daily schedule on only if its manifest exists: a schedule that can only fail
    (and be retried) every night is worse than none."""
    manifest = env["IAP_MANIFEST"]
    try:
        exists = fsspec.get_fs_token_paths(manifest)[0].exists(manifest)
    except Exception:  # noqa: BLE001 - unreachable storage: treated as missing, and said so
        exists = False
    if exists:
        return f"iap-data/refresh scheduled daily (03:00 UTC) on {manifest}"
    listing = _prefect(env | {"COLUMNS": "300"}, "deployment", "schedule", "ls", "iap-data/refresh")  # whole ids
    for schedule_id in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listing):
        _prefect(env, "deployment", "schedule", "pause", "iap-data/refresh", schedule_id)
    return (f"iap-data/refresh paused: its manifest {manifest} does not exist; run `iap server up --manifest URL`"
            " (or set IAP_MANIFEST) to schedule it")


def down(home: str | None = None) -> None:
    path = Path(home or os.environ.get("PREFECT_HOME", ROOT / ".prefect")) / "iap-server.json"
    if not path.exists():
        raise IapError(f"no local iap server recorded in {path}")
    _stop_recorded(path)


def _started(pid: int) -> float | None:
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _stop_recorded(path: Path) -> None:
    """Stop the worker and server recorded in `path`, whichever of them still runs (one may have crashed),
    and forget them. A recorded pid now held by another process (its start time differs) is left alone."""
    if not path.exists():
        return
    state = json.loads(path.read_text())
    for name in ("worker", "server"):
        pid = state[name]
        recorded, started = state.get("started", {}).get(str(pid)), _started(pid)
        if started is None or (recorded is not None and abs(started - recorded) > 1e-3):
            continue  # gone, or the pid is another process's now
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):  # a worker needs two SIGINTs
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, 5 if sig == signal.SIGINT else 10):
                break
    path.unlink()


def _wait_gone(pid: int, seconds: float) -> bool:
    import psutil
    try:
        psutil.Process(pid).wait(timeout=seconds)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        pass
    return True
