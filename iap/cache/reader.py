"""A cache read back for training: its frozen cross-attention layers and a streaming source of its samples
(shards shuffled per epoch, prefetched), the same interface as the live source (iap.cache.live)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow.parquet as pq
import torch
from safetensors.torch import load

from iap.cache.info import CacheInfo, filesystem
from iap.errors import IapError
from iap.models.base import noise_from_seeds
from iap.objective import FrozenBatch
from iap.system.runtime import CPU, Runtime, place


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
    fs = filesystem(info.url)
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
        self.fs = filesystem(info.url)
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
