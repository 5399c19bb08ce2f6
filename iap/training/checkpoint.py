"""Training checkpoints: written atomically, verified on load, never silently ignored.

Layout of RUN/checkpoints/step-000200/:
  encoder/            the Chinese encoder + tokenizer (save_pretrained, safetensors)
  optimizer.safetensors + optimizer.json   AdamW state tensors and param groups
  state.json          step, config, loss history, file checksums
RUN/checkpoints/latest names the newest complete checkpoint. A checkpoint directory appears
under its final name only after everything in it is written and fsynced (rename of a temp dir).

A remote RUN (s3://...) is trained in a local staging folder (storage.local_workdir): each committed
checkpoint is uploaded (state.json last), then the remote `latest` moves; a resumed run first pulls
the remote latest checkpoint. Readers of a remote checkpoint get a verified local copy (fetch_checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iap.errors import IapError
from iap.models.base import weights_fingerprint
from iap.system.storage import (
    fetch_folder,
    filesystem,
    get_tree,
    is_remote,
    local_workdir,
    put_tree,
    staged_folder,
    write_atomic,
)

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
    with staged_folder(final, "state.json") as tmp:  # replaces a same-step leftover of a run killed before `latest`
        encoder.model.save_pretrained(tmp / "encoder", safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp / "encoder")
        _optimizer_to_files(optimizer, tmp)
        meta = {"step": state.step, "losses": state.losses, "config": config, "lineage": lineage,
                "encoder_sha256": sha256_file(tmp / ENCODER_WEIGHTS),
                "optimizer_sha256": sha256_file(tmp / "optimizer.safetensors"),
                "rng": "per-step: torch seeded from (seed, step); data order from (seed, epoch)"}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    write_atomic(str(ckpt_root / "latest"), final.name.encode())
    for old in prunable([p.name for p in ckpt_root.glob("step-*")], final.name, keep):
        shutil.rmtree(ckpt_root / old, ignore_errors=True)
    return final


def prunable(names: list[str], latest: str, keep: int) -> list[str]:
    """The checkpoints to delete so that `keep` remain: only ones older than `latest`, never `latest` itself.
    One newer than `latest` (left by a killed run or a failed upload, perhaps incomplete) is not judged here:
    the save of that step replaces it."""
    older = sorted(n for n in names if n <= latest)  # step-NNNNNN sorts by step
    return older[:-max(keep, 1)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest committed checkpoint, or None for a fresh run. Inconsistent state is an error."""
    ckpt_root = Path(run_dir) / "checkpoints"  # a reader never cleans up: a staging folder may be live
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        if any(ckpt_root.glob("step-*")):
            raise IapError(f"{ckpt_root} has checkpoints but no 'latest' pointer; remove the folder to restart")
        return None
    return ckpt_root / pointer.read_text().strip()


def local_run(run_dir: str | Path) -> Path:
    """Where training writes checkpoints: run_dir itself, or (remote) a staging folder holding the remote
    run's latest checkpoint, so a resumed run continues from it."""
    if not is_remote(run_dir):
        return Path(run_dir)
    run_dir, local = str(run_dir).rstrip("/"), local_workdir(str(run_dir))
    fs = filesystem(run_dir)
    try:
        name = fs.cat_file(f"{run_dir}/checkpoints/latest").decode().strip()
    except FileNotFoundError:  # the remote is the truth: a new run (or one deleted there) starts afresh
        shutil.rmtree(local / "checkpoints", ignore_errors=True)
        return local
    pointer = local / "checkpoints" / "latest"
    if not (pointer.exists() and pointer.read_text().strip() == name):
        (local / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(local / "checkpoints" / name, ignore_errors=True)
        get_tree(f"{run_dir}/checkpoints/{name}", local / "checkpoints" / name)
        write_atomic(str(pointer), name.encode())
    return local


def push_checkpoint(ckpt: Path, run_dir: str | Path, keep: int) -> str:
    """The committed local checkpoint at its run's URL (a no-op for a local run): files first, state.json
    last, then `latest`; older remote checkpoints beyond `keep` are removed."""
    if not is_remote(run_dir):
        return str(ckpt)
    root = f"{str(run_dir).rstrip('/')}/checkpoints"
    put_tree(ckpt, f"{root}/{ckpt.name}", last="state.json")
    fs = filesystem(root)
    write_atomic(f"{root}/latest", ckpt.name.encode(), fs)
    fs.invalidate_cache(root)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{root}/step-*")]
    for old in prunable(names, ckpt.name, keep):
        fs.rm(f"{root}/{old}", recursive=True)
    return f"{root}/{ckpt.name}"


def checkpoint_url(run_dir: str | Path, step: int) -> Path | str:
    """Where a run's checkpoint of `step` lives: a Path for a local run, a URL for a remote one."""
    name = f"checkpoints/step-{step:06d}"
    return f"{str(run_dir).rstrip('/')}/{name}" if is_remote(run_dir) else Path(run_dir) / name


def committed_checkpoint(run_dir: str | Path) -> Path | str | None:
    """The run's newest committed checkpoint (local Path or URL), from its `latest` pointer."""
    if not is_remote(run_dir):
        return latest_checkpoint(Path(run_dir))
    try:
        name = filesystem(str(run_dir)).cat_file(f"{str(run_dir).rstrip('/')}/checkpoints/latest").decode().strip()
    except FileNotFoundError:
        return None
    return f"{str(run_dir).rstrip('/')}/checkpoints/{name}"


def run_of(ckpt: str | Path) -> str:
    """The run folder (local path or URL) a checkpoint belongs to: RUN/checkpoints/step-N -> RUN."""
    return str(ckpt).rstrip("/").rsplit("/", 2)[0]


def fetch_checkpoint(ckpt: str | Path) -> Path:
    """A local folder with the checkpoint: itself, or (remote) a download cached by its URL."""
    return fetch_folder(ckpt, "state.json", "checkpoints")


def read_checkpoint_meta(ckpt: str | Path) -> dict:
    """state.json of a checkpoint, after checking that its files exist and match their checksums."""
    ckpt = fetch_checkpoint(ckpt)
    try:
        meta = json.loads((ckpt / "state.json").read_text())
        for rel, key in ((ENCODER_WEIGHTS, "encoder_sha256"), ("optimizer.safetensors", "optimizer_sha256")):
            if sha256_file(ckpt / rel) != meta[key]:
                raise IapError(f"checkpoint {ckpt} is corrupt: {rel} does not match its recorded checksum")
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise IapError(f"checkpoint {ckpt} is missing or corrupt ({e}); "
                       "remove it (and fix 'latest') to resume from an older one, or start a new run") from e
    return meta


def load_checkpoint(ckpt: str | Path, encoder, optimizer) -> TrainState:
    ckpt = fetch_checkpoint(ckpt)
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
