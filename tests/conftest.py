"""Fixtures only (helpers are in tests/helpers.py). Shared, expensive ones are session-scoped: the tiny
presets, the served data, one demo run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile  # noqa: E402

# Prefect state and task results of in-process flows go to a throwaway place.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="iap-prefect-home-"))
os.environ.setdefault("IAP_RESULTS_DIR", tempfile.mkdtemp(prefix="iap-results-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A fresh ephemeral API takes ~22 s to start on an idle 2-core machine (its database is new): over Prefect's 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Local copies of remote outputs (staged runs, fetched checkpoints) start empty: a session never meets a
# stale copy that another session's bucket (moto's, gone since) left in ~/.cache/iap.
os.environ.setdefault("IAP_CACHE_DIR", tempfile.mkdtemp(prefix="iap-cache-"))

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from iap.data.pipeline import run_data  # noqa: E402
from iap.data.snapshot import FilterConfig  # noqa: E402
from iap.models import load_base, load_chinese_encoder  # noqa: E402
from iap.presets.tiny import TINY_SD2, TINY_SDXL, write_tiny  # noqa: E402
from iap.shapes.synth import serve, write_synth  # noqa: E402
from tests.helpers import (  # noqa: E402
    BROKEN,
    DOWNLOAD,
    FILTER,
    N_GOOD,
    free_port,
    shapes_source,
    start_moto,
    start_prefect_server,
    stop_process_group,
    wait_for_api,
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def sd2_dir(tmp_path_factory):
    """The SD-2-shaped tiny preset: v-prediction, and a Chinese BERT narrower than the cross-attention."""
    return write_tiny(tmp_path_factory.mktemp("tiny-sd2"), TINY_SD2, "tiny-sd2")


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory):
    """The SDXL-shaped tiny preset: two English towers, the pooled embedding and time ids."""
    return write_tiny(tmp_path_factory.mktemp("tiny-sdxl"), TINY_SDXL, "tiny-sdxl")


@pytest.fixture
def sdxl_base(sdxl_dir):
    return load_base(sdxl_dir / "base")


@pytest.fixture
def sdxl_encoder(sdxl_dir, sdxl_base):
    """The SDXL Chinese side: the base's two towers with the tiny BERT's vocabulary."""
    return load_chinese_encoder(sdxl_dir / "zh_encoder", sdxl_base.cross_attention_dim, sdxl_base.max_length,
                                base=str(sdxl_dir / "base"))


@pytest.fixture
def base(tiny_dir):
    return load_base(tiny_dir / "base")


@pytest.fixture
def sd2_base(sd2_dir):
    return load_base(sd2_dir / "base")


@pytest.fixture
def sd2_encoder(sd2_dir, sd2_base):
    return load_chinese_encoder(sd2_dir / "zh_encoder", sd2_base.cross_attention_dim, sd2_base.max_length)


@pytest.fixture
def encoder(tiny_dir, base):
    torch.manual_seed(0)
    return load_chinese_encoder(tiny_dir / "zh_encoder", base.cross_attention_dim, base.max_length)


@pytest.fixture
def small_source(base, encoder):
    return shapes_source(base, encoder)


@pytest.fixture(scope="session")
def demo_summary(tmp_path_factory):
    """One `iap demo` (the command a user types: the iap-train flow, ephemeral Prefect) with the default
    settings, shared by every test that needs a trained encoder; its summary.json plus what it printed."""
    import json
    import subprocess
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary API, as for a user
    r = subprocess.run([str(Path(sys.executable).parent / "iap"), "demo", "--workdir", str(workdir)],
                       capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    summary["workdir"] = str(workdir)
    summary["console"] = r.stdout + r.stderr
    return summary


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    port = free_port()
    manifest = write_synth(folder, n=N_GOOD, seed=0, base_url=f"http://127.0.0.1:{port}", broken=BROKEN)
    server = serve(folder, port)
    yield manifest
    server.shutdown()


@pytest.fixture(scope="session")
def local_run(served, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    report, snapshot = run_data(str(served), str(out), DOWNLOAD, FILTER)
    return out, report, snapshot




@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) on 127.0.0.1 with an empty bucket 'iap-test'."""
    import fsspec
    import s3fs
    server, _ = start_moto(monkeypatch)
    fs = fsspec.filesystem("s3")
    fs.mkdir("iap-test")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="session")
def grouped_snapshot_small(served, tmp_path_factory):
    """The served shapes data with whole combinations held out (val), for evaluation tests."""
    _, snapshot = run_data(str(served), str(tmp_path_factory.mktemp("grouped")), DOWNLOAD,
                           FilterConfig(split_key="combo", val_fraction=0.3, test_fraction=0.0, shard_rows=20))
    return snapshot


E2E_FIXTURES = {"demo_summary"}  # a test that needs the demo's run is end to end, wherever it is


# One Prefect API for the session's flows, in-process and in subprocesses: each `iap` command on the default
# engine would otherwise start its own temporary API (~10 s; ~30 s on a fresh database), over 20 times in the
# full suite. The inner loop (`-m "not e2e"`) runs no flow and starts none; the demo keeps the user's path
# (a temporary API) and so does the engine test of its start-up timeout. Set here, before anything imports
# Prefect: it reads its settings once.
SHARED_API: list = []


def pytest_configure(config):
    if "not e2e" in (config.option.markexpr or ""):
        return  # (a PREFECT_API_URL of the user's own shell is replaced below: tests never touch their server)
    proc, url = start_prefect_server(os.environ["PREFECT_HOME"])
    SHARED_API[:] = [proc, url]
    os.environ["PREFECT_API_URL"] = url


def pytest_unconfigure(config):
    if SHARED_API:
        stop_process_group(SHARED_API[0])


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """The session's Prefect API, once it answers (None in the inner loop)."""
    if SHARED_API:
        wait_for_api(*SHARED_API)
    return SHARED_API[1] if SHARED_API else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.e2e)


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary API servers while the terminal is still open: their own atexit stop logs to
    a stream pytest has closed by then (30 lines of 'Logging error ... I/O operation on closed file')."""
    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
