"""A local Prefect setup for the real user path: server + process pool + deployments + worker.

Shells out to the `prefect` CLI (the library itself never imports Prefect). State lives in
PREFECT_HOME (default ./.prefect) and pids in PREFECT_HOME/iap-server.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from iap.errors import IapError

ROOT = Path(__file__).resolve().parent.parent


def local_env(port: int, out: str, pool: str = "local-pool") -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2", "PWD": str(ROOT), "IAP_CHECKOUT": str(ROOT),
            "IAP_OUT": str(Path(out).resolve()), "IAP_WORK_POOL": pool, "IAP_GPU_WORK_POOL": pool,
            "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    env.setdefault("IAP_MANIFEST", str(Path(out).resolve() / "manifest.parquet"))
    return env


def _prefect(env: dict, *args: str, timeout: int = 120) -> str:
    exe = str(Path(sys.executable).with_name("prefect"))
    r = subprocess.run([exe, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise IapError(f"prefect {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def up(port: int = 4200, out: str = "runs/prefect", pool: str = "local-pool") -> dict:
    env = local_env(port, out, pool)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("prefect"))
    logs = Path(env["PREFECT_HOME"])
    server = subprocess.Popen([exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    _prefect(env, "server", "status", "--wait", "--timeout", "90")
    _prefect(env, "work-pool", "create", pool, "--type", "process", "--overwrite")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    worker = subprocess.Popen([exe, "worker", "start", "--pool", pool, "--type", "process"], env=env,
                              stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    state = {"server": server.pid, "worker": worker.pid, "api": env["PREFECT_API_URL"], "home": env["PREFECT_HOME"]}
    (logs / "iap-server.json").write_text(json.dumps(state))
    return state


def down(home: str | None = None) -> None:
    path = Path(home or os.environ.get("PREFECT_HOME", ROOT / ".prefect")) / "iap-server.json"
    if not path.exists():
        raise IapError(f"no local iap server recorded in {path}")
    state = json.loads(path.read_text())
    for name in ("worker", "server"):
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):  # a worker needs two SIGINTs
            try:
                os.killpg(state[name], sig)
            except ProcessLookupError:
                break
            time.sleep(1)
    path.unlink()
