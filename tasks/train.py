"""The training task: trains from a cache, reports progress and the loss curve as artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import materialize

from iap.cache import open_cache
from iap.checkpoint import checkpoint_id
from iap.config import TrainConfig
from iap.profile import stage
from iap.runtime import detect
from iap.train import train
from iap.wiring import from_cache
from tasks import PERSIST, artifacts, by_key
from tasks.data import PLACEHOLDER_ASSET
from tasks.models import base_model


@materialize(PLACEHOLDER_ASSET, cache_key_fn=by_key, **PERSIST)
def train_encoder(key: str, cache_url: str, base: str, zh_encoder: str, run_dir: str, config: TrainConfig,
                  lineage: dict) -> dict:
    """Train the Chinese encoder from the cache into run_dir (resumes); `key` is the run's content id."""
    log = get_run_logger()
    if config.distributed:
        return _train_launched(cache_url, base, zh_encoder, run_dir, config, lineage)
    info = open_cache(cache_url, base_fingerprint=lineage["base_fingerprint"])
    runtime = detect(config.mixed_precision)
    log.info(f"training on {runtime}")
    run = from_cache(info, config, base, zh_encoder, runtime, lambda: base_model(base, config.mixed_precision))
    progress = create_progress_artifact(progress=0.0, key="iap-train-progress", description="training steps")
    with stage("train") as record:
        result = train(config, run.encoder, run.objective, run.source, run_dir, log=log.info, lineage=lineage,
                       empty=run.empty, on_step=lambda s: update_progress_artifact(progress, 100.0 * s.step / config.steps))
        record["samples"] = result.state.step * config.batch_size * config.grad_accum
    curve = artifacts.loss_curve(result.state.losses, f"{run_dir.rstrip('/')}/loss_curve.png",
                                 f"final loss {result.state.losses[-1][1]:.6f} after {result.state.step} steps, "
                                 f"{result.samples_per_second:.1f} samples/s")
    return {"checkpoint": str(result.checkpoint), "checkpoint_id": checkpoint_id(result.checkpoint),
            "steps": result.state.step, "seconds": round(result.seconds, 1),
            "samples_per_second": round(result.samples_per_second, 1), "losses": result.state.losses,
            "loss_curve": str(curve)}


def _train_launched(cache_url: str, base: str, zh_encoder: str, run_dir: str, config: TrainConfig,
                    lineage: dict) -> dict:
    """Data-parallel training: `python -m iap train` under torchrun / accelerate launch, then the result
    read back from the checkpoint rank 0 wrote."""
    import json
    import tempfile
    import time

    from iap.checkpoint import committed_checkpoint, read_checkpoint_meta
    from iap.launch import run_launched
    log = get_run_logger()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "train.json"
        config_file.write_text(config.model_dump_json())
        run_launched(["train", "--base", base, "--zh-encoder", zh_encoder, "--out", run_dir, "--cache", cache_url,
                      "--config", str(config_file), "--lineage", json.dumps(lineage)],
                     config.num_processes, config.accelerate_config, log=log.info)
    ckpt = committed_checkpoint(run_dir)
    state = read_checkpoint_meta(ckpt)
    seconds = time.perf_counter() - started
    curve = artifacts.loss_curve(state["losses"], f"{run_dir.rstrip('/')}/loss_curve.png",
                                 f"final loss {state['losses'][-1][1]:.6f} after {state['step']} steps")
    return {"checkpoint": str(ckpt), "checkpoint_id": checkpoint_id(ckpt), "steps": state["step"],
            "seconds": round(seconds, 1), "samples_per_second": round(state["step"] * config.batch_size / seconds, 1),
            "losses": state["losses"], "loss_curve": str(curve)}
