"""What tests share besides fixtures (those are in conftest.py): data configs, the tiny training run, the
`iap` command, killers, the moto server, and assertions more than one test makes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from iap import shapes
from iap.cache.live import build_in_memory_source, image_size
from iap.config import TrainConfig
from iap.data.download import DownloadConfig
from iap.data.snapshot import FilterConfig
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.training.loop import train

IAP = str(Path(sys.executable).parent / "iap")  # the console script a user types


def run_iap(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900,
            expect: int | None = 0) -> subprocess.CompletedProcess:
    """`iap ARGS` in a subprocess, as a user runs it; asserts the exit code (None: any), naming its output."""
    r = subprocess.run([IAP, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if expect is not None:
        assert r.returncode == expect, r.stdout[-3000:] + r.stderr[-3000:]
    return r


# the served shapes data and small, fast stage settings for it
N_GOOD, BROKEN = 40, 2
DOWNLOAD = DownloadConfig(image_size=32, min_image_size=16, timeout=2, number_sample_per_shard=30)
FILTER = FilterConfig(shard_rows=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
# `iap train` on the served data in seconds: the same settings on every engine
ENGINE_OPTIONS = ["--download-image-size", "32", "--download-min-image-size", "16", "--download-timeout", "2",
                  "--download-number-sample-per-shard", "30", "--filter-shard-rows", "20", "--filter-split-key",
                  "combo", "--filter-val-fraction", "0.3", "--filter-test-fraction", "0", "--train-steps", "20",
                  "--train-batch-size", "8", "--train-checkpoint-every", "20", "--train-log-every", "10",
                  "--cache-draws", "1", "--evaluate-samples", "0"]


def shapes_source(base, encoder, n: int = 16, seed: int = 3):
    """n shapes triples in memory, for this base and encoder."""
    samples = shapes.samples(n, seed=seed)
    size = image_size(base)
    return build_in_memory_source(base, encoder, [shapes.render(s, size) for s in samples],
                                  [s.caption_en for s in samples], [s.caption_zh for s in samples])


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


class Stop(Exception):
    """Raised by train_briefly's step hook: the process 'dies' after a given step."""


def train_briefly(base, encoder, run: Path, stop_at: int | None = None):
    """6 steps, a checkpoint every 3; with `stop_at`, the process 'dies' right after that step."""
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=1, lr=1e-3, warmup_steps=1,
                      empty_prompt_fraction=0.25)

    def die(state):
        if state.step == stop_at:
            raise Stop

    empty = EmptyPrompt.pair(base.english([""]), encoder)
    return train(cfg, encoder, make_objective("pivot", Teacher(base)), shapes_source(base, encoder), run,
                 log=lambda _: None, empty=empty, on_step=die)


def start_prefect_server(home: str) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free 127.0.0.1 port with its state in `home`; returns (process, API URL)
    at once: the caller waits with `wait_for_api` when it first needs it."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                             "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler", "--no-late-runs"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/api"


def wait_for_api(proc: subprocess.Popen, url: str, timeout: int = 180) -> None:
    """Wait as `iap server up` does: `prefect server status --wait`."""
    r = subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "status", "--wait", "--timeout",
                        str(timeout)], env={**os.environ, "PREFECT_API_URL": url}, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=timeout + 60)
    assert r.returncode == 0, f"the Prefect server at {url} did not answer (exit code {proc.poll()}): {r.stdout}"


def stop_process_group(proc: subprocess.Popen) -> None:
    import signal
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def assert_same_cache_shards(infos: dict, reference: str) -> None:
    """Every cache in `infos` (name -> CacheInfo) has the reference's key and its shards' bytes (train split:
    more than one shard, so that concurrency had something to mix up)."""
    assert len({info.key for info in infos.values()}) == 1
    names = [s["name"] for s in infos[reference].shards["train"]]
    assert len(names) > 1
    for name in names:
        want = Path(infos[reference].url, "shards", f"{name}.safetensors").read_bytes()
        for other, info in infos.items():
            assert Path(info.url, "shards", f"{name}.safetensors").read_bytes() == want, (other, name)
