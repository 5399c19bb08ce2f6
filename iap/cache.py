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
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field
from safetensors.torch import load, save

from iap.config import StageConfig, launch_field
from iap.data.reader import decode, read_shard
from iap.data.snapshot import Snapshot
from iap.errors import IapError
from iap.models.base import BaseModel, noise_from_seeds
from iap.objective import FrozenBatch, Teacher, placeholder_added_cond
from iap.runtime import CPU, Runtime, place
from iap.source import image_size, to_pixels
from iap.storage import write_atomic

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheConfig(StageConfig):
    policy: Literal["recompute", "store", "store-sampled"] = "recompute"
    positions: int = Field(64, ge=1, description="store-sampled: query positions per layer per draw")
    draws: int = Field(2, ge=1, description="timestep/noise draws per sample")
    latent: Literal["mean", "sample"] = "mean"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    splits: list[str] = Field(default_factory=lambda: ["train", "val"])
    seed: int = 0
    batch_size: int | None = launch_field(None, ge=1, description="samples per VAE/UNet pass (None: 32 on a GPU, 4 on a CPU)")
    # how shards are spread (Prefect task runners); none of it changes the cache key
    task_runner: Literal["thread", "process", "dask", "ray"] = launch_field(
        "thread", description="dask / ray need prefect-dask / prefect-ray")
    workers: int | None = launch_field(None, ge=1, description="parallel shards (None: the runner's default)")
    runner_address: str | None = launch_field(None, description="Dask scheduler or Ray cluster address (None: local)")

    max_gb: float | None = launch_field(500.0, gt=0, description="stop before writing anything when the projected cache "
                                                       "size exceeds this many GB (None: no limit)")



@dataclass
class CacheInfo:
    key: str
    url: str
    snapshot_id: str
    base_fingerprint: str
    cross_attention_dim: int
    config: dict
    shards: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{name, rows, bytes}]
    bytes: int = 0
    seconds: float = 0.0
    cached: bool = False

    @property
    def policy(self) -> str:
        return self.config["policy"]


def cache_key(snapshot_id: str, base_fingerprint: str, cfg: CacheConfig) -> str:
    return hashlib.sha256(f"{snapshot_id}:{base_fingerprint}:{cfg.identity()}"
                          .encode()).hexdigest()[:16]


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def _fs(url: str) -> fsspec.AbstractFileSystem:
    return fsspec.get_fs_token_paths(url)[0]


def _write(fs, url: str, data: bytes) -> None:
    write_atomic(url, data, fs)


# ---------------------------------------------------------------- precompute


def _draws(keys: list[str], cfg: CacheConfig, num_timesteps: int) -> tuple[list[list[int]], list[list[int]]]:
    """(N, K) timesteps and noise seeds as host integers, a pure function of (seed, key, k): shard order
    does not matter."""
    seeds = [[_seed(cfg.seed, key, k) for k in range(cfg.draws)] for key in keys]
    steps = [[_seed(cfg.seed, key, k, "t") % num_timesteps for k in range(cfg.draws)] for key in keys]
    return steps, seeds


def _latents(base: BaseModel, pixels: torch.Tensor, keys: list[str], cfg: CacheConfig) -> torch.Tensor:
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


def compute_batch(base: BaseModel, teacher: Teacher | None, pixels: torch.Tensor, captions_en: list[str],
                  keys: list[str], cfg: CacheConfig) -> dict[str, torch.Tensor]:
    """The cached tensors of one batch (host memory, storage dtype): VAE and English encoder on the base's
    device, then the teacher's targets for store policies."""
    dtype = DTYPES[cfg.dtype]
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


def _compute_shard(base: BaseModel, teacher: Teacher | None, rows: list[dict], cfg: CacheConfig) -> dict:
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


def plan_cache(snapshot: Snapshot, base_fingerprint: str, out_url: str, cfg: CacheConfig) -> CachePlan:
    key = cache_key(snapshot.id, base_fingerprint, cfg)
    shards = [(split, rel) for split in cfg.splits for rel in snapshot.shards.get(split, [])]
    return CachePlan(key, f"{out_url.rstrip('/')}/cache-{key}", snapshot, base_fingerprint, cfg, shards)


def _shard_name(split: str, rel: str) -> str:
    return f"{split}-{rel.rsplit('/', 1)[-1].removesuffix('.parquet')}"


def shard_done(plan: CachePlan, split: str, rel: str) -> bool:
    return _fs(plan.url).exists(f"{plan.url}/shards/{_shard_name(split, rel)}.parquet")


def precompute_shard(plan: CachePlan, split: str, rel: str, base: BaseModel) -> dict:
    """Compute and commit one cache shard (skipped when already committed)."""
    fs, name = _fs(plan.url), _shard_name(split, rel)
    shard_url = f"{plan.url}/shards/{name}"
    if not fs.exists(f"{shard_url}.parquet"):
        teacher = Teacher(base) if plan.config.policy != "recompute" else None
        rows = read_shard(f"{plan.snapshot.url}/{rel}")
        tensors = _compute_shard(base, teacher, rows, plan.config)
        fs.makedirs(f"{plan.url}/shards", exist_ok=True)
        _write(fs, f"{shard_url}.safetensors", save(tensors))
        _write(fs, f"{shard_url}.parquet", _index(rows, tensors))  # commit point of the shard
    with fs.open(f"{shard_url}.parquet", "rb") as f:
        rows_n = pq.read_metadata(f).num_rows
    return {"split": split, "name": name, "rows": rows_n, "bytes": fs.size(f"{shard_url}.safetensors"),
            "url": f"{shard_url}.parquet"}


def commit_cache(plan: CachePlan, shards: list[dict], base: BaseModel | None, seconds: float) -> CacheInfo:
    """Write the layer weights (store policies) and cache.json, the cache's commit point."""
    fs = _fs(plan.url)
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


def precompute(snapshot: Snapshot, load_base_model: Callable[[], BaseModel], base_fingerprint: str, out_url: str,
               cfg: CacheConfig | None = None, log: Callable[[str], None] = logging.getLogger(__name__).info,
               on_progress: Callable[[int, int], None] | None = None) -> CacheInfo:
    """Fill OUT/cache-<key>, skipping committed shards; loads the base only if there is work to do.
    `on_progress(shards done, shards)` after each shard."""
    plan = plan_cache(snapshot, base_fingerprint, out_url, cfg or CacheConfig())
    if _fs(plan.url).exists(f"{plan.url}/cache.json"):
        return open_cache(plan.url)
    started, base, shards = time.perf_counter(), None, []
    if plan.config.max_gb is not None and not any(shard_done(plan, split, rel) for split, rel in plan.shards):
        base = load_base_model()
        check_budget(plan, base)
    for split, rel in plan.shards:
        if base is None and (not shard_done(plan, split, rel) or plan.config.policy != "recompute"):
            base = load_base_model()
        shards.append(precompute_shard(plan, split, rel, base))
        log(f"cached {shards[-1]['name']}: {shards[-1]['rows']} samples")
        if on_progress:
            on_progress(len(shards), len(plan.shards))
    return commit_cache(plan, shards, base, time.perf_counter() - started)


def _dim_from_any(fs, url: str, shards: dict) -> int:
    first = next(s["name"] for v in shards.values() for s in v)
    with fs.open(f"{url}/shards/{first}.safetensors", "rb") as f:
        return int(load(f.read())["en_states"].shape[-1])


def open_cache(url: str, snapshot_id: str | None = None, base_fingerprint: str | None = None) -> CacheInfo:
    """A committed cache; refuses one built for another snapshot or base model."""
    fs = _fs(url)
    if not fs.exists(f"{url}/cache.json"):
        raise IapError(f"cache {url} does not exist or is incomplete (no cache.json); run iap precompute")
    with fs.open(f"{url}/cache.json", "r") as f:
        info = CacheInfo(**{**json.load(f), "cached": True})
    if snapshot_id and info.snapshot_id != snapshot_id:
        raise IapError(f"cache {url} was built for snapshot {info.snapshot_id}, not {snapshot_id}")
    if base_fingerprint and info.base_fingerprint != base_fingerprint:
        raise IapError(f"cache {url} was built for base model {info.base_fingerprint}, not {base_fingerprint}")
    return info


# ---------------------------------------------------------------- projection (--dry-run)


def projected_bytes_per_sample(base: BaseModel, cfg: CacheConfig) -> dict[str, float]:
    """Bytes per sample of each stored part, from one probe English pass for the layer shapes."""
    item = torch.finfo(DTYPES[cfg.dtype]).bits // 8
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


def check_budget(plan: CachePlan, base: BaseModel) -> float:
    """The projected cache size in bytes; an IapError (before anything is written) when it exceeds max_gb."""
    cfg = plan.config
    rows = sum(plan.snapshot.rows.get(split, 0) for split in cfg.splits)
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


# ---------------------------------------------------------------- training source


class FrozenCrossAttention(torch.nn.Module):
    """Just what `iap.attention.attend` needs of a cross-attention layer: to_k, to_v, to_out, heads, scale."""

    def __init__(self, weights: dict[str, torch.Tensor], name: str, heads: int, scale: float):
        super().__init__()

        def linear(part: str) -> torch.nn.Linear:
            w = weights[f"{name}.{part}.weight"]
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=f"{name}.{part}.bias" in weights)
            lin.weight.data.copy_(w)
            if lin.bias is not None:
                lin.bias.data.copy_(weights[f"{name}.{part}.bias"])
            return lin

        self.to_k, self.to_v = linear("to_k"), linear("to_v")
        self.to_out = torch.nn.ModuleList([linear("to_out"), torch.nn.Identity()])
        self.heads, self.scale = heads, scale
        self.requires_grad_(False)


def load_cached_layers(info: CacheInfo, runtime: Runtime = CPU) -> dict[str, FrozenCrossAttention]:
    """The cached cross-attention weights, placed on the runtime's device in its precision."""
    fs = _fs(info.url)
    if info.policy == "recompute":
        raise IapError(f"cache {info.url} has policy 'recompute': training needs the base UNet")
    with fs.open(f"{info.url}/layers.safetensors", "rb") as f:
        weights = load(f.read())
    with fs.open(f"{info.url}/layers.json", "r") as f:
        meta = json.load(f)
    return {n: place(FrozenCrossAttention(weights, n, m["heads"], m["scale"]).eval(), runtime) for n, m in meta.items()}


class CacheSource:
    """Streams a cache split for training: shards shuffled per epoch, then samples within a window of
    `window_shards` shards; the next shards are prefetched in a background thread. The order is a
    pure function of (seed, epoch), so resume is exact."""

    def __init__(self, info: CacheInfo, split: str, tokenize: Callable[[list[str]], torch.Tensor],
                 window_shards: int = 4, keep_shards: int = 8):
        if split not in info.shards:
            raise IapError(f"cache {info.url} has no '{split}' split (has {', '.join(info.shards)})")
        self.info, self.split, self.tokenize = info, split, tokenize
        self.shards = [s["name"] for s in info.shards[split]]
        sizes = torch.tensor([s["rows"] for s in info.shards[split]])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.window = window_shards
        self.fs = _fs(info.url)
        self._loaded: OrderedDict[int, dict] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._keep = keep_shards
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._upcoming: list[int] = []

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        shard_order = torch.randperm(len(self.shards), generator=generator).tolist()
        self._upcoming = shard_order
        order = []
        for w in range(0, len(shard_order), self.window):
            idx = torch.cat([torch.arange(self.offsets[s], self.offsets[s + 1]) for s in shard_order[w:w + self.window]])
            order.append(idx[torch.randperm(len(idx), generator=generator)])
        return torch.cat(order)

    def _read(self, shard: int) -> dict:
        url = f"{self.info.url}/shards/{self.shards[shard]}"
        with self.fs.open(f"{url}.safetensors", "rb") as f:
            tensors = load(f.read())
        with self.fs.open(f"{url}.parquet", "rb") as f:
            index = pq.read_table(f, columns=["key", "caption_zh"])
        tensors["zh_ids"] = self.tokenize(index["caption_zh"].to_pylist())
        tensors["_keys"] = index["key"].to_pylist()
        return tensors

    def _shard(self, shard: int) -> dict:
        if shard not in self._loaded:
            future = self._pending.pop(shard, None)
            self._loaded[shard] = future.result() if future else self._read(shard)
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(shard)
        self._prefetch(shard)
        return self._loaded[shard]

    def _prefetch(self, current: int) -> None:
        if current in self._upcoming:
            pos = self._upcoming.index(current)
            for nxt in self._upcoming[pos + 1:pos + 1 + self.window]:
                if nxt not in self._loaded and nxt not in self._pending:
                    self._pending[nxt] = self._pool.submit(self._read, nxt)

    def _locate(self, indices: torch.Tensor, generator: torch.Generator):
        shard_of = torch.searchsorted(self.offsets, indices, right=True) - 1
        draw = torch.randint(0, self.info.config["draws"], (len(indices),), generator=generator)
        return shard_of, draw

    def keys_and_seeds(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
        """The sample keys and noise seeds that `batch` draws for the same indices and generator state."""
        shard_of, draw = self._locate(indices, generator)
        keys, seeds = [], []
        for i, (s, d) in enumerate(zip(shard_of.tolist(), draw.tolist(), strict=True)):
            t, r = self._shard(s), int(indices[i] - self.offsets[s])
            keys.append(t["_keys"][r])
            seeds.append(t["noise_seeds"][r, d])
        return keys, torch.stack(seeds)

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> FrozenBatch:
        shard_of, draw = self._locate(indices, generator)
        rows: dict[str, list[torch.Tensor]] = {}
        for i, (s, d) in enumerate(zip(shard_of.tolist(), draw.tolist(), strict=True)):
            t, r = self._shard(s), int(indices[i] - self.offsets[s])
            for name, value in t.items():
                if name.startswith(("q.", "o.")) or name in ("timesteps", "noise_seeds"):  # per draw
                    rows.setdefault(name, []).append(value[r, d])
                elif not name.startswith(("pos.", "_")):
                    rows.setdefault(name, []).append(value[r])
        stacked = {n: torch.stack(v) for n, v in rows.items()}
        latents = stacked["latents"].float()
        added = {"text_embeds": stacked["en_pooled"].float(), "time_ids": stacked["time_ids"]} \
            if "en_pooled" in stacked else None
        batch = FrozenBatch(zh_ids=stacked["zh_ids"], en_states=stacked["en_states"].float(), latents=latents,
                            timesteps=stacked["timesteps"], added_cond=added)
        batch.noise = noise_from_seeds(stacked["noise_seeds"], latents.shape[1:])  # objectives that run the UNet
        if self.info.policy != "recompute":
            batch.queries = {n[2:]: v for n, v in stacked.items() if n.startswith("q.")}
            batch.targets = {n[2:]: v for n, v in stacked.items() if n.startswith("o.")}
        return batch
