"""Precompute and cache the frozen English side once per (snapshot, base model, cache config).

Layout of OUT/cache-<key>/ (local or s3://), <key> = hash(snapshot id, base fingerprint, config):
  shards/<split>-<name>.safetensors   per sample: VAE latent, English states, K draws (timestep,
                                      noise seed); with `store`/`store-sampled`, every cross-attention
                                      layer's queries and English outputs per draw (and positions)
  shards/<split>-<name>.parquet       index (written last: the shard's commit point): key, captions,
                                      row, timesteps, noise seeds
  layers.safetensors + layers.json    each cross-attention layer's frozen to_k/to_v/to_out weights,
                                      so `store` policies train without loading the UNet
  cache.json                          written last: the cache's commit point
Teacher policies: `recompute` (one no-grad UNet pass per step at train time; smallest, exact),
`store` (exact, fastest training, largest), `store-sampled P` (P random positions per layer per
draw: an unbiased estimate of the full loss, ~HW/P smaller).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load, save

from iap.cache.budget import check_budget
from iap.cache.info import CacheConfig, CacheInfo, cache_key, filesystem, open_cache
from iap.cache.live import image_size, to_pixels
from iap.data.reader import decode, read_shard
from iap.data.snapshot import Snapshot
from iap.models.base import FrozenBase, noise_from_seeds
from iap.objective import FrozenBatch, Teacher
from iap.system.storage import write_atomic


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def _write(fs, url: str, data: bytes) -> None:
    write_atomic(url, data, fs)


# ---------------------------------------------------------------- precompute


def _draws(keys: list[str], cfg: CacheConfig, num_timesteps: int) -> tuple[list[list[int]], list[list[int]]]:
    """(N, K) timesteps and noise seeds as host integers, a pure function of (seed, key, k): shard order
    does not matter."""
    seeds = [[_seed(cfg.seed, key, k) for k in range(cfg.draws)] for key in keys]
    steps = [[_seed(cfg.seed, key, k, "t") % num_timesteps for k in range(cfg.draws)] for key in keys]
    return steps, seeds


def _latents(base: FrozenBase, pixels: torch.Tensor, keys: list[str], cfg: CacheConfig) -> torch.Tensor:
    seeds = [_seed(cfg.seed, k, "z") for k in keys] if cfg.latent == "sample" else None
    return base.encode_images(pixels, seeds).float().cpu()


def _teacher_targets(teacher: Teacher, latents, states, added, steps, seeds, keys, cfg: CacheConfig) -> dict:
    """Per layer: queries and English outputs for every draw, (N, K, HW or P, C). Positions are sampled on the
    UNet's device, so only what is stored crosses to the host."""
    out: dict[str, list[torch.Tensor]] = {}
    for k in range(cfg.draws):
        batch = FrozenBatch(zh_ids=torch.zeros(len(keys), 1), en_states=states, latents=latents,
                            noise=noise_from_seeds([row[k] for row in seeds], latents.shape[1:]),
                            timesteps=torch.tensor([row[k] for row in steps]), added_cond=added)
        queries, outputs, _ = teacher.english_pass(batch)
        for name in queries:
            q, o = queries[name], outputs[name]
            if cfg.policy == "store-sampled":
                pos = torch.stack([torch.randperm(q.shape[1], generator=torch.Generator().manual_seed(
                    _seed(cfg.seed, key, k, name)))[:cfg.positions] for key in keys])
                at = pos.to(q.device)[..., None]
                q, o = torch.gather(q, 1, at.expand(-1, -1, q.shape[-1])), torch.gather(o, 1, at.expand(-1, -1, o.shape[-1]))
                out.setdefault(f"pos.{name}", []).append(pos.to(torch.int32))
            out.setdefault(f"q.{name}", []).append(q.float().cpu())
            out.setdefault(f"o.{name}", []).append(o.float().cpu())
    return {n: torch.stack(v, dim=1) for n, v in out.items()}


def compute_batch(base: FrozenBase, teacher: Teacher | None, pixels: torch.Tensor, captions_en: list[str],
                  keys: list[str], cfg: CacheConfig) -> dict[str, torch.Tensor]:
    """The cached tensors of one batch (host memory, storage dtype): VAE and English encoder on the base's
    device, then the teacher's targets for store policies."""
    dtype = getattr(torch, cfg.dtype)  # CacheConfig.dtype names a torch dtype
    latents = _latents(base, pixels, keys, cfg)
    states, pooled = base.english(captions_en)
    states = states.float().cpu()
    steps, seeds = _draws(keys, cfg, base.noise_scheduler.config.num_train_timesteps)
    tensors = {"latents": latents.to(dtype), "en_states": states.to(dtype), "timesteps": torch.tensor(steps),
               "noise_seeds": torch.tensor(seeds, dtype=torch.int64)}
    added = base.added_cond(pooled, latents)
    if added is not None:  # SDXL: the added-embedding inputs, per sample (time ids: the image's size and crop)
        tensors |= {"en_pooled": added["text_embeds"].to(dtype), "time_ids": added["time_ids"]}
    if teacher is not None:
        targets = _teacher_targets(teacher, latents, states, added, steps, seeds, keys, cfg)
        tensors |= {n: t if n.startswith("pos.") else t.to(dtype) for n, t in targets.items()}
    return tensors


def compute_shard(base: FrozenBase, teacher: Teacher | None, rows: list[dict], cfg: CacheConfig) -> dict:
    """One shard's cached tensors (also the `--dry-run` probe that times a batch)."""
    size, parts = image_size(base), {}
    batch_size = cfg.batch_size or default_batch_size(base.device)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        pixels = to_pixels([decode(r["image"]) for r in chunk], size)
        tensors = compute_batch(base, teacher, pixels, [r["caption_en"] for r in chunk], [r["key"] for r in chunk], cfg)
        for n, t in tensors.items():
            parts.setdefault(n, []).append(t)
    return {n: torch.cat(v).contiguous() for n, v in parts.items()}


def default_batch_size(device: torch.device) -> int:
    """Samples per VAE/UNet pass when CacheConfig.batch_size is None: at 512 px a CPU batch of 16 peaks near
    18 GB (VAE activations), a GPU batch of 32 keeps an 80 GB card busy."""
    return 32 if device.type == "cuda" else 4


def _index(rows: list[dict], tensors: dict) -> bytes:
    table = pa.table({"key": [r["key"] for r in rows], "caption_zh": [r["caption_zh"] for r in rows],
                      "caption_en": [r["caption_en"] for r in rows], "row": list(range(len(rows))),
                      "timesteps": tensors["timesteps"].tolist(), "noise_seeds": tensors["noise_seeds"].tolist()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _layers_blob(teacher: Teacher) -> tuple[bytes, dict]:
    weights, meta = {}, {}
    for name, attn in teacher.layers.items():
        for part, mod in (("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            weights[f"{name}.{part}.weight"] = mod.weight.detach().float().cpu().contiguous()
            if mod.bias is not None:
                weights[f"{name}.{part}.bias"] = mod.bias.detach().float().cpu().contiguous()
        meta[name] = {"heads": attn.heads, "scale": attn.scale}
    return save(weights), meta


@dataclass
class CachePlan:
    """What a precompute must produce: the cache URL and one entry per snapshot shard."""

    key: str
    url: str
    snapshot: Snapshot
    base_fingerprint: str
    config: CacheConfig
    shards: list[tuple[str, str]]  # (split, snapshot-relative shard path)

    @property
    def rows(self) -> int:
        """Samples the cache will hold (the snapshot rows of its splits)."""
        return sum(self.snapshot.rows.get(split, 0) for split in self.config.splits)


def plan_cache(snapshot: Snapshot, base_fingerprint: str, out_url: str, cfg: CacheConfig) -> CachePlan:
    key = cache_key(snapshot.id, base_fingerprint, cfg)
    shards = [(split, rel) for split in cfg.splits for rel in snapshot.shards.get(split, [])]
    return CachePlan(key, f"{out_url.rstrip('/')}/cache-{key}", snapshot, base_fingerprint, cfg, shards)


def _shard_name(split: str, rel: str) -> str:
    return f"{split}-{rel.rsplit('/', 1)[-1].removesuffix('.parquet')}"


def shard_done(plan: CachePlan, split: str, rel: str) -> bool:
    return filesystem(plan.url).exists(f"{plan.url}/shards/{_shard_name(split, rel)}.parquet")


def precompute_shard(plan: CachePlan, split: str, rel: str, base: FrozenBase) -> dict:
    """Compute and commit one cache shard (skipped when already committed)."""
    fs, name = filesystem(plan.url), _shard_name(split, rel)
    shard_url = f"{plan.url}/shards/{name}"
    if not fs.exists(f"{shard_url}.parquet"):
        teacher = Teacher(base) if plan.config.policy != "recompute" else None
        rows = read_shard(f"{plan.snapshot.url}/{rel}")
        tensors = compute_shard(base, teacher, rows, plan.config)
        fs.makedirs(f"{plan.url}/shards", exist_ok=True)
        _write(fs, f"{shard_url}.safetensors", save(tensors))
        _write(fs, f"{shard_url}.parquet", _index(rows, tensors))  # commit point of the shard
    with fs.open(f"{shard_url}.parquet", "rb") as f:
        rows_n = pq.read_metadata(f).num_rows
    return {"split": split, "name": name, "rows": rows_n, "bytes": fs.size(f"{shard_url}.safetensors"),
            "url": f"{shard_url}.parquet"}


def _dim_from_any(fs, url: str, shards: dict) -> int:
    first = next(s["name"] for v in shards.values() for s in v)
    with fs.open(f"{url}/shards/{first}.safetensors", "rb") as f:
        return int(load(f.read())["en_states"].shape[-1])


def commit_cache(plan: CachePlan, shards: list[dict], base: FrozenBase | None, seconds: float) -> CacheInfo:
    """Write the layer weights (store policies) and cache.json, the cache's commit point."""
    fs = filesystem(plan.url)
    if plan.config.policy != "recompute" and not fs.exists(f"{plan.url}/layers.json"):
        blob, meta = _layers_blob(Teacher(base))
        _write(fs, f"{plan.url}/layers.safetensors", blob)
        _write(fs, f"{plan.url}/layers.json", json.dumps(meta).encode())
    by_split: dict[str, list[dict]] = {}
    for s in shards:
        by_split.setdefault(s["split"], []).append({k: v for k, v in s.items() if k not in ("split", "url")})
    dim = base.cross_attention_dim if base else _dim_from_any(fs, plan.url, by_split)
    info = CacheInfo(key=plan.key, url=plan.url, snapshot_id=plan.snapshot.id,
                     base_fingerprint=plan.base_fingerprint, cross_attention_dim=dim,
                     config=plan.config.model_dump(mode="json"), shards=by_split,
                     bytes=sum(s["bytes"] for s in shards), seconds=round(seconds, 2))
    _write(fs, f"{plan.url}/cache.json", json.dumps({k: v for k, v in asdict(info).items() if k != "cached"},
                                                    indent=1).encode())
    return info


def precompute(snapshot: Snapshot, load_base_model: Callable[[], FrozenBase], base_fingerprint: str, out_url: str,
               cfg: CacheConfig | None = None, log: Callable[[str], None] = logging.getLogger(__name__).info,
               on_progress: Callable[[int, int], None] | None = None) -> CacheInfo:
    """Fill OUT/cache-<key>, skipping committed shards; loads the base only if there is work to do.
    `on_progress(shards done, shards)` after each shard."""
    plan = plan_cache(snapshot, base_fingerprint, out_url, cfg or CacheConfig())
    if filesystem(plan.url).exists(f"{plan.url}/cache.json"):
        return open_cache(plan.url)
    started, base, shards = time.perf_counter(), None, []
    if plan.config.max_gb is not None and not any(shard_done(plan, split, rel) for split, rel in plan.shards):
        base = load_base_model()
        check_budget(plan.config, plan.rows, base)
    for split, rel in plan.shards:
        if base is None and (not shard_done(plan, split, rel) or plan.config.policy != "recompute"):
            base = load_base_model()
        shards.append(precompute_shard(plan, split, rel, base))
        log(f"cached {shards[-1]['name']}: {shards[-1]['rows']} samples")
        if on_progress:
            on_progress(len(shards), len(plan.shards))
    return commit_cache(plan, shards, base, time.perf_counter() - started)
