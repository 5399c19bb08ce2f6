"""Frozen-side data sources for training: the seam between data/cache and the training step.

A source knows its size and returns a FrozenBatch for given sample indices, drawing the
per-batch randomness (timesteps, noise) only from the generator it is handed, so training is
reproducible and resumable from the step number alone.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from PIL import Image

from iap.models.base import FrozenBase
from iap.models.chinese import ChineseEncoder
from iap.objective import FrozenBatch


class FrozenSource(Protocol):
    def __len__(self) -> int: ...

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor: ...

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> FrozenBatch: ...


def image_size(base: FrozenBase) -> int:
    """The pixel size the base model was built for: latent size times the VAE's downsampling."""
    return int(base.unet.config.sample_size) * 2 ** (len(base.vae.config.block_out_channels) - 1)


def to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images -> (N, 3, size, size) in [-1, 1] (center crop to square, bicubic resize)."""
    out = []
    for img in images:
        img = img.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


class InMemorySource:
    """Latents, English states and Chinese token ids held in memory; fresh (t, noise) per batch."""

    def __init__(self, latents: torch.Tensor, en_states: torch.Tensor, zh_ids: torch.Tensor,
                 num_train_timesteps: int, added_cond: dict[str, torch.Tensor] | None = None):
        assert len(latents) == len(en_states) == len(zh_ids)
        self.latents, self.en_states, self.zh_ids = latents, en_states, zh_ids
        self.num_train_timesteps = num_train_timesteps
        self.added_cond = added_cond  # SDXL: per-sample English pooled embedding and time ids

    def __len__(self) -> int:
        return len(self.latents)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(self), generator=generator)

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> FrozenBatch:
        latents = self.latents[indices]
        t = torch.randint(0, self.num_train_timesteps, (len(indices),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        added = None if self.added_cond is None else {k: v[indices] for k, v in self.added_cond.items()}
        return FrozenBatch(zh_ids=self.zh_ids[indices], en_states=self.en_states[indices],
                           latents=latents, noise=noise, timesteps=t, added_cond=added)


@torch.no_grad()
def _encode(base: FrozenBase, images: list[Image.Image], captions_en: list[str]) -> tuple[torch.Tensor, ...]:
    """VAE latents, English states and SDXL's added-embedding inputs (None otherwise) of one batch, on the
    base's device, returned in fp32 host memory."""
    latents = base.encode_images(to_pixels(images, image_size(base))).float().cpu()
    states, pooled = base.english(captions_en)
    return latents, states.float().cpu(), base.added_cond(pooled, latents)


def _source(base: FrozenBase, parts: list[tuple], zh_ids: torch.Tensor) -> InMemorySource:
    added = None if parts[0][2] is None else {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
    return InMemorySource(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), zh_ids,
                          base.noise_scheduler.config.num_train_timesteps, added)


def build_in_memory_source(base: FrozenBase, encoder: ChineseEncoder, images: list[Image.Image],
                           captions_en: list[str], captions_zh: list[str], batch_size: int = 64) -> InMemorySource:
    """Encode images (VAE mean) and English captions once; tokenize Chinese captions."""
    parts = [_encode(base, images[i:i + batch_size], captions_en[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    return _source(base, parts, encoder.tokenize(captions_zh))


def snapshot_source(base: FrozenBase, encoder: ChineseEncoder, snapshot, split: str, limit: int | None = None,
                    batch_size: int = 64) -> tuple[InMemorySource, list[dict]]:
    """An in-memory source over the first `limit` rows (all: None) of a snapshot split, read one shard at a
    time and decoded one batch at a time; the rows come back without their image bytes."""
    from iap.data.reader import decode, read_shard
    from iap.errors import IapError

    parts, rows = [], []
    for url in snapshot.split_urls(split):
        shard = read_shard(url, columns=None)[:None if limit is None else limit - len(rows)]
        for i in range(0, len(shard), batch_size):
            chunk = shard[i:i + batch_size]
            parts.append(_encode(base, [decode(r["image"]) for r in chunk], [r["caption_en"] for r in chunk]))
        rows += [{k: v for k, v in r.items() if k != "image"} for r in shard]
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise IapError(f"snapshot {snapshot.id} has no rows in split '{split}'")
    return _source(base, parts, encoder.tokenize([r["caption_zh"] for r in rows])), rows
