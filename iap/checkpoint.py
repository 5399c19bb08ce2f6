"""Training checkpoints: written atomically, verified on load, never silently ignored.

Layout of RUN/checkpoints/step-000200/:
  encoder/            the Chinese encoder + tokenizer (save_pretrained, safetensors)
  optimizer.safetensors + optimizer.json   AdamW state tensors and param groups
  state.json          step, config, loss history, file checksums
RUN/checkpoints/latest names the newest complete checkpoint. A checkpoint directory appears
under its final name only after everything in it is written and fsynced (rename of a temp dir).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iap.errors import IapError
from iap.models.base import weights_fingerprint

ENCODER_WEIGHTS = "encoder/model.safetensors"


@dataclass
class TrainState:
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _optimizer_to_files(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    sd = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous()
               for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"]}))


def _optimizer_from_files(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_file(folder / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = value
    groups = json.loads((folder / "optimizer.json").read_text())["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run_dir: Path, encoder, optimizer, state: TrainState, config: dict, keep: int,
                    lineage: dict) -> Path:
    """Write a complete checkpoint under a temp name, then commit it and move `latest`."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state.step:06d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    encoder.model.save_pretrained(tmp / "encoder", safe_serialization=True)
    encoder.tokenizer.save_pretrained(tmp / "encoder")
    _optimizer_to_files(optimizer, tmp)
    meta = {"step": state.step, "losses": state.losses, "config": config, "lineage": lineage,
            "encoder_sha256": sha256_file(tmp / ENCODER_WEIGHTS),
            "optimizer_sha256": sha256_file(tmp / "optimizer.safetensors"),
            "rng": "per-step: torch seeded from (seed, step); data order from (seed, epoch)"}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a same-step leftover from a run killed before `latest` moved
    os.rename(tmp, final)
    pointer = ckpt_root / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, ckpt_root / "latest")
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest committed checkpoint, or None for a fresh run. Inconsistent state is an error."""
    ckpt_root = Path(run_dir) / "checkpoints"
    for tmp in ckpt_root.glob(".tmp-*"):  # left by a killed run: never complete, never read
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        if any(ckpt_root.glob("step-*")):
            raise IapError(f"{ckpt_root} has checkpoints but no 'latest' pointer; remove the folder to restart")
        return None
    return ckpt_root / pointer.read_text().strip()


def read_checkpoint_meta(ckpt: str | Path) -> dict:
    """state.json of a checkpoint, after checking that its files exist and match their checksums."""
    ckpt = Path(ckpt)
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        for rel, key in ((ENCODER_WEIGHTS, "encoder_sha256"), ("optimizer.safetensors", "optimizer_sha256")):
            if sha256_file(ckpt / rel) != meta[key]:
                raise IapError(f"checkpoint {ckpt} is corrupt: {rel} does not match its recorded checksum")
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise IapError(f"checkpoint {ckpt} is missing or corrupt ({e}); "
                       "remove it (and fix 'latest') to resume from an older one, or start a new run") from e
    return meta


def load_checkpoint(ckpt: Path, encoder, optimizer) -> TrainState:
    meta = read_checkpoint_meta(ckpt)
    try:
        weights = load_file(ckpt / ENCODER_WEIGHTS)
        missing, unexpected = encoder.model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.startswith("pooler.")]:
            raise IapError(f"checkpoint {ckpt} does not fit this encoder (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
        _optimizer_from_files(optimizer, ckpt)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise IapError(f"checkpoint {ckpt} is corrupt: {e}") from e
    return TrainState(step=int(meta["step"]), losses=[tuple(x) for x in meta["losses"]])


def checkpoint_id(ckpt: str | Path) -> str:
    """The content id of a checkpoint: the hash of its encoder weights."""
    return read_checkpoint_meta(ckpt)["encoder_sha256"][:16]


def check_lineage(meta: dict, base_source: str, what: str) -> str:
    """Refuse a checkpoint trained on another base model."""
    fingerprint = weights_fingerprint(base_source)
    trained_on = meta.get("lineage", {}).get("base_fingerprint")
    if trained_on and trained_on != fingerprint:
        raise IapError(f"{what} was trained for base model fingerprint {trained_on} "
                       f"({meta['lineage'].get('base', '?')}), not for '{base_source}' ({fingerprint})")
    return fingerprint
