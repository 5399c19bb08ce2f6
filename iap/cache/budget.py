"""What a cache will cost before it is written (`--dry-run`, `max_gb`): bytes per sample of each stored part,
from one probe English pass for the layer shapes."""

from __future__ import annotations

import torch

from iap.cache.info import CacheConfig
from iap.errors import IapError
from iap.models.base import FrozenBase
from iap.objective import FrozenBatch, Teacher, placeholder_added_cond


def projected_bytes_per_sample(base: FrozenBase, cfg: CacheConfig) -> dict[str, float]:
    """Bytes per sample of each stored part, from one probe English pass for the layer shapes."""
    item = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    size = base.unet.config.sample_size
    c = base.unet.config.in_channels
    latent = c * size * size * item
    states = base.max_length * base.cross_attention_dim * item
    added = placeholder_added_cond(base.unet, 1)
    if added is not None:  # SDXL: the pooled embedding (storage dtype) and the time ids (fp32)
        states += added["text_embeds"].shape[1] * item + 6 * 4
    teacher_bytes = 0
    if cfg.policy != "recompute":
        probe = FrozenBatch(zh_ids=torch.zeros(1, 1), en_states=torch.zeros(1, base.max_length, base.cross_attention_dim),
                            latents=torch.zeros(1, c, size, size), noise=torch.zeros(1, c, size, size),
                            timesteps=torch.tensor([500]), added_cond=added)
        queries, outputs, _ = Teacher(base).english_pass(probe.to(base.device))
        for name, q in queries.items():
            n = min(cfg.positions, q.shape[1]) if cfg.policy == "store-sampled" else q.shape[1]
            teacher_bytes += n * (q.shape[-1] + outputs[name].shape[-1]) * item
            teacher_bytes += n * 4 if cfg.policy == "store-sampled" else 0
        teacher_bytes *= cfg.draws
    return {"latent": latent, "en_states": states, "draws": cfg.draws * 16, "teacher": teacher_bytes,
            "total": latent + states + cfg.draws * 16 + teacher_bytes}


def check_budget(cfg: CacheConfig, rows: int, base: FrozenBase) -> float:
    """The projected size in bytes of a cache of `rows` samples; an IapError (before anything is written) when
    it exceeds max_gb."""
    total = projected_bytes_per_sample(base, cfg)["total"] * rows
    if cfg.max_gb is None or total <= cfg.max_gb * 1e9:
        return total
    smallest = projected_bytes_per_sample(base, cfg.model_copy(update={"policy": "recompute"}))["total"] * rows
    raise IapError(
        f"cache over budget: policy '{cfg.policy}' with {cfg.draws} draws"
        f"{f' and {cfg.positions} positions' if cfg.policy == 'store-sampled' else ''} over {rows:,} samples would "
        f"write {total / 1e9:,.1f} GB, more than max_gb={cfg.max_gb:g}. Options: policy 'recompute' "
        f"({smallest / 1e9:,.1f} GB, any number of draws), fewer draws or positions, a smaller snapshot, or a "
        f"larger max_gb. Nothing was written.")
