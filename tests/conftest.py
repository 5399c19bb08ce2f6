"""Shared, expensive fixtures are session-scoped: the tiny preset and one demo run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile  # noqa: E402

# Prefect state and task results of in-process flows go to a throwaway place.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="iap-prefect-home-"))
os.environ.setdefault("IAP_RESULTS_DIR", tempfile.mkdtemp(prefix="iap-results-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Local copies of remote outputs (staged runs, fetched checkpoints) start empty: a session never meets a
# stale copy that another session's bucket (moto's, gone since) left in ~/.cache/iap.
os.environ.setdefault("IAP_CACHE_DIR", tempfile.mkdtemp(prefix="iap-cache-"))

import socket  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from iap import shapes  # noqa: E402
from iap.cache.live import build_in_memory_source, image_size  # noqa: E402
from iap.data.download import DownloadConfig  # noqa: E402
from iap.data.pipeline import run_data  # noqa: E402
from iap.data.snapshot import FilterConfig  # noqa: E402
from iap.models import load_base, load_chinese_encoder  # noqa: E402
from iap.presets.tiny import TINY_SD2, TINY_SDXL, write_tiny  # noqa: E402
from iap.shapes.synth import serve, write_synth  # noqa: E402


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


def shapes_source(base, encoder, n: int = 16, seed: int = 3):
    """n shapes triples in memory, for this base and encoder."""
    samples = shapes.samples(n, seed=seed)
    size = image_size(base)
    return build_in_memory_source(base, encoder, [shapes.render(s, size) for s in samples],
                                  [s.caption_en for s in samples], [s.caption_zh for s in samples])


@pytest.fixture
def small_source(base, encoder):
    return shapes_source(base, encoder)


def preset_models(request, preset: str):
    """(base, encoder, small source) of a tiny preset by name: 'tiny' (SD-1.x-shaped), 'tiny-sd2' or 'tiny-sdxl'."""
    if preset == "tiny":
        return request.getfixturevalue("base"), request.getfixturevalue("encoder"), request.getfixturevalue("small_source")
    prefix = preset.removeprefix("tiny-")
    base, encoder = request.getfixturevalue(f"{prefix}_base"), request.getfixturevalue(f"{prefix}_encoder")
    return base, encoder, shapes_source(base, encoder)


PRESETS = ["tiny", "tiny-sd2", "tiny-sdxl"]


def assert_pivot_equals_live(teacher, encoder, batch):
    """pivot (standalone attention over the English pass's queries) == a real UNet pass with the Chinese
    states in which every cross-attention layer is fed those queries: loss and gradients. Returns the
    English pass (queries, targets, eps)."""
    from dataclasses import replace

    from iap.objective import layer_mse, make_objective, states_of
    queries, targets, eps = teacher.english_pass(batch)
    pivot = make_objective("pivot", teacher, pooled_weight=0)  # the attention objective alone
    params = [p for p in encoder.parameters() if p.requires_grad]
    loss_given = pivot(encoder(batch.zh_ids), replace(batch, queries=queries, targets=targets))
    grads_given = torch.autograd.grad(loss_given, params, allow_unused=True)
    outputs, _ = teacher.chinese_pass(batch, states_of(encoder(batch.zh_ids)), inject=queries)
    loss_live = layer_mse(outputs, targets, pivot.weights)
    grads_live = torch.autograd.grad(loss_live, params, allow_unused=True)
    assert loss_given.item() > 1e-3
    torch.testing.assert_close(loss_given, loss_live, rtol=1e-6, atol=1e-9)
    for a, b in zip(grads_given, grads_live, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    return queries, targets, eps


def assert_chinese_draws_like_english(m: dict, teacher_floor: float = 0.90) -> None:
    """The transfer gate on a demo's metrics: held-out Chinese prompts reach >= 85% colour accuracy, within 5
    points of the teacher's English prompts; the untrained encoder stays near chance (1/56)."""
    print({k: v for k, v in m.items() if "accuracy" in k})
    assert m["generated_prompts"] >= 40
    assert m["colour_accuracy_en_teacher"] >= teacher_floor
    assert m["colour_accuracy_zh_after"] >= 0.85
    assert m["colour_accuracy_en_teacher"] - m["colour_accuracy_zh_after"] <= 0.05
    assert m["colour_accuracy_zh_before"] <= 0.10


@pytest.fixture(scope="session")
def demo_summary(tmp_path_factory):
    """One `iap demo` (the command a user types: the iap-train flow, ephemeral Prefect) with the default
    settings, shared by every test that needs a trained encoder; its summary.json plus what it printed."""
    import json
    import subprocess
    workdir = tmp_path_factory.mktemp("demo")
    r = subprocess.run([str(Path(sys.executable).parent / "iap"), "demo", "--workdir", str(workdir)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    summary["workdir"] = str(workdir)
    summary["console"] = r.stdout + r.stderr
    return summary


N_GOOD, BROKEN = 40, 2
DOWNLOAD = DownloadConfig(image_size=32, min_image_size=16, timeout=2, number_sample_per_shard=30)
FILTER = FilterConfig(shard_rows=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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




def kill_at_marker(args: list[str], marker: str) -> None:
    """Run a process until it prints `marker` on a line of its own, then kill -9 it."""
    import signal
    import subprocess
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == marker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_after_checkpoint(args: list[str], run: Path, at_least: int, env: dict | None = None) -> int:
    """Start a training job, kill -9 it (and every process it started: torchrun puts each rank in its own
    session) once checkpoint `at_least` or later is committed; returns the step of the last checkpoint."""
    import signal
    import subprocess
    import time

    import psutil

    from iap.training.checkpoint import latest_checkpoint, read_checkpoint_meta
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    pointer, deadline = run / "checkpoints" / "latest", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and pointer.read_text().strip() >= f"step-{at_least:06d}":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    job = psutil.Process(proc.pid)
    for p in [*job.children(recursive=True), job]:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    return read_checkpoint_meta(latest_checkpoint(run))["step"]


def start_moto(monkeypatch, port: int = 0):
    """A moto S3 server on 127.0.0.1 with fresh state, and env pointing s3fs at it. moto's backends and
    fsspec's s3fs instances are process-global, so both are reset for each server."""
    import s3fs
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import httpx
    httpx.post(f"http://{host}:{port}/moto-api/reset", timeout=10)
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    return server, port


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


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary API servers while the terminal is still open: their own atexit stop logs to
    a stream pytest has closed by then (30 lines of 'Logging error ... I/O operation on closed file')."""
    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
