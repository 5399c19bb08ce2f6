"""Train the Chinese encoder with an objective over a frozen-side source (accelerate loop).

Reproducibility and resume: every random draw of step s comes from generators seeded by
(seed, s) and the data order of epoch e from (seed, e), so the step number is the whole RNG
and data state. A run restarted after `kill -9` continues from its last checkpoint and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from iap.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from iap.config import TrainConfig
from iap.errors import IapError
from iap.models.chinese import ChineseEncoder
from iap.source import FrozenSource


@dataclass
class TrainResult:
    checkpoint: Path
    state: TrainState
    seconds: float
    samples_per_second: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + p) % (2**63 - 1)
    return h


class DataOrder:
    """Deterministic batches: micro-batch m is a slice of epoch m // batches_per_epoch, whose order
    the source draws from a generator seeded by (seed, epoch)."""

    def __init__(self, source: FrozenSource, batch_size: int, seed: int):
        n = len(source)
        if n < batch_size:
            raise IapError(f"the training set has {n} samples, fewer than batch_size={batch_size}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, micro_batch: int) -> torch.Tensor:
        epoch, pos = divmod(micro_batch, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, self.source.epoch_order(g)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): ~10x faster steps than the default loop on CPU."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _resume(run_dir: Path, cfg: TrainConfig, encoder, optimizer, log) -> TrainState:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return TrainState()
    saved = TrainConfig.model_validate(read_checkpoint_meta(ckpt)["config"])
    if saved.identity() != cfg.identity():
        changed = [k for k in TrainConfig.model_fields
                   if k not in cfg.RESUMABLE_CHANGES and getattr(saved, k) != getattr(cfg, k)]
        raise IapError(f"{run_dir} holds a run with a different config (changed: {', '.join(changed)}); "
                       "use a new run directory")
    state = load_checkpoint(ckpt, encoder, optimizer)
    log(f"resumed from {ckpt} at step {state.step}")
    return state


def train(cfg: TrainConfig, encoder: ChineseEncoder, objective: Callable, source: FrozenSource,
          run_dir: str | Path, log: Callable[[str], None] = print,
          on_step: Callable[[TrainState], None] | None = None, lineage: dict | None = None) -> TrainResult:
    """Train `encoder` to minimise `objective(encoder(batch.zh_ids), batch)`; checkpoints in run_dir.
    `lineage` (base model fingerprint, data ids) is stored in every checkpoint."""
    run_dir = Path(run_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    encoder.train()
    optimizer = make_optimizer([p for p in encoder.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    state = _resume(run_dir, cfg, encoder, optimizer, log)
    model, optimizer = accelerator.prepare(encoder, optimizer)
    order = DataOrder(source, cfg.batch_size, cfg.seed)
    config = cfg.model_dump(mode="json")
    ckpt = latest_checkpoint(run_dir)
    window: list[float] = []
    start, start_step = time.perf_counter(), state.step
    while state.step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.step, cfg)
        torch.manual_seed(_seed(cfg.seed, state.step, 1))  # dropout etc.
        total = 0.0
        for micro in range(cfg.grad_accum):
            g = torch.Generator().manual_seed(_seed(cfg.seed, state.step, micro, 2))
            batch = source.batch(order.indices(state.step * cfg.grad_accum + micro), g).to(accelerator.device)
            with accelerator.autocast():
                loss = objective(model(batch.zh_ids), batch) / cfg.grad_accum
            accelerator.backward(loss)
            total += loss.item()
        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window.append(total)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            state.losses.append((state.step, sum(window) / len(window)))
            elapsed = time.perf_counter() - start
            rate = (state.step - start_step) / max(elapsed, 1e-9)
            log(f"step {state.step}/{cfg.steps} loss {state.losses[-1][1]:.5f} lr {lr_at(state.step - 1, cfg):.2e} "
                f"{rate:.2f} steps/s {rate * cfg.batch_size * cfg.grad_accum:.1f} samples/s")
            window = []
            if on_step:
                on_step(state)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            ckpt = save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, state, config,
                                   cfg.keep_checkpoints, lineage or {})
    elapsed = time.perf_counter() - start
    done = state.step - start_step
    return TrainResult(checkpoint=ckpt, state=state, seconds=elapsed,
                       samples_per_second=done * cfg.batch_size * cfg.grad_accum / max(elapsed, 1e-9))
