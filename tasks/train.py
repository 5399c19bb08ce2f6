"""The training task: trains from a cache, reports progress and the loss curve as artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import materialize

from iap.cache import CacheSource, load_cached_layers, open_cache
from iap.checkpoint import checkpoint_id
from iap.config import TrainConfig
from iap.models import load_chinese_encoder
from iap.models.base import english_empty_states
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.train import train
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
    needs_unet = info.policy == "recompute" or config.objective != "pivot"
    # the loaded base already holds the text encoder; store policies load only the text encoder
    en_empty = base_model(base).encode_english([""]) if needs_unet else english_empty_states(base)
    encoder = load_chinese_encoder(zh_encoder, info.cross_attention_dim, max_length=en_empty.shape[1])
    layers = None
    if needs_unet:
        objective = make_objective(config.objective, Teacher(base_model(base)), config.layer_weights)
    else:
        layers = load_cached_layers(info)
        objective = make_objective("pivot", None, config.layer_weights, layers=layers)
    progress = create_progress_artifact(progress=0.0, key="iap-train-progress", description="training steps")
    result = train(config, encoder, objective, CacheSource(info, "train", encoder.tokenize), run_dir,
                   log=log.info, lineage=lineage, empty=EmptyPrompt.pair(en_empty, encoder, layers),
                   on_step=lambda s: update_progress_artifact(progress, 100.0 * s.step / config.steps))
    curve = artifacts.loss_curve_png(result.state.losses, Path(run_dir) / "loss_curve.png")
    artifacts.markdown("iap-loss-curve", f"![loss curve]({curve.resolve().as_uri()})\n\nPNG: `{curve}`\n\n"
                       f"final loss {result.state.losses[-1][1]:.6f} after {result.state.step} steps, "
                       f"{result.samples_per_second:.1f} samples/s", "training loss curve")
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

    from iap.checkpoint import latest_checkpoint, read_checkpoint_meta
    from iap.launch import run_launched
    log = get_run_logger()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "train.json"
        config_file.write_text(config.model_dump_json())
        run_launched(["train", "--base", base, "--zh-encoder", zh_encoder, "--out", run_dir, "--cache", cache_url,
                      "--config", str(config_file), "--lineage", json.dumps(lineage)],
                     config.num_processes, config.accelerate_config, log=log.info)
    ckpt = latest_checkpoint(Path(run_dir))
    state = read_checkpoint_meta(ckpt)
    seconds = time.perf_counter() - started
    curve = artifacts.loss_curve_png(state["losses"], Path(run_dir) / "loss_curve.png")
    return {"checkpoint": str(ckpt), "checkpoint_id": checkpoint_id(ckpt), "steps": state["step"],
            "seconds": round(seconds, 1), "samples_per_second": round(state["step"] * config.batch_size / seconds, 1),
            "losses": state["losses"], "loss_curve": str(curve)}
