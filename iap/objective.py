"""The IAP objective and two baselines, behind one interface: objective(zh_states, batch) -> loss.

IAP ("images as pivots"): for every cross-attention layer l of the frozen UNet, the attention
output of the image queries Q_l over the Chinese states must match the output of the same
queries over the English states:

    loss = sum_l w_l * mse(attend_l(Q_l, h_zh), attend_l(Q_l, h_en)) / sum_l w_l

Query modes:
  pivot     Q_l comes from the English-conditioned pass (or a cache) and is reused for the Chinese
            side, which then needs only the encoder and each layer's frozen to_k/to_v/to_out.
  separate  the Chinese side runs its own UNet pass; gradients flow through the frozen UNet.
Baselines: embedding-mse (text states only) and eps-distill (noise prediction zh vs en).

SDXL: the Chinese side also returns a pooled embedding, which reaches the UNet through the added time
embedding, not through cross-attention; PooledMatch adds an MSE to the English pooled embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from iap.attention import attend, install_capture, recording
from iap.models.base import FrozenBase

OBJECTIVES = ("pivot", "separate", "embedding-mse", "eps-distill")


@dataclass
class FrozenBatch:
    """The frozen-side tensors of one batch: from memory (iap.cache.live) or, later, from the cache."""

    zh_ids: torch.Tensor  # (B, L) Chinese token ids
    en_states: torch.Tensor  # (B, L, D) English encoder hidden states
    latents: torch.Tensor | None = None  # (B, C, h, w) clean VAE latents
    noise: torch.Tensor | None = None  # same shape as latents
    timesteps: torch.Tensor | None = None  # (B,)
    queries: dict[str, torch.Tensor] | None = None  # English-pass queries per layer, when given
    targets: dict[str, torch.Tensor] | None = None  # English attention outputs per layer, when given
    # SDXL's added time embedding inputs, English side: {"text_embeds": (B, pooled), "time_ids": (B, 6)}
    added_cond: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> FrozenBatch:
        def move(x):
            if isinstance(x, dict):
                return {k: v.to(device) for k, v in x.items()}
            return None if x is None else x.to(device)
        return FrozenBatch(**{k: move(v) for k, v in vars(self).items()})


def placeholder_added_cond(unet, n: int) -> dict[str, torch.Tensor] | None:
    """Zero SDXL added-embedding inputs of the right shapes for n samples (probes that need only shapes);
    None for a UNet without the added time embedding."""
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        return None
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"text_embeds": torch.zeros(n, pooled), "time_ids": torch.zeros(n, 6)}


@dataclass
class EmptyPrompt:
    """The empty prompt on both sides. Classifier-free guidance runs the text encoder on "" for its
    unconditional branch, so a share of each batch is trained as zh "" -> en "" (peers drop 10% of
    captions). Cached targets of those rows are recomputed from the cached queries."""

    zh_ids: torch.Tensor  # (L,)
    en_states: torch.Tensor  # (L, D)
    layers: dict[str, Attention] | None = None  # needed only for batches that carry targets
    en_pooled: torch.Tensor | None = None  # (P,) SDXL's pooled embedding of ""

    @classmethod
    def pair(cls, english: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], encoder,
             layers: dict[str, Attention] | None = None) -> EmptyPrompt:
        """From the base's English states of "" (1, L, D), or (states, SDXL's pooled (1, P) or None), and the
        Chinese tokenizer."""
        states, pooled = english if isinstance(english, tuple) else (english, None)
        return cls(zh_ids=encoder.tokenize([""])[0], en_states=states[0].float().cpu(), layers=layers,
                   en_pooled=None if pooled is None else pooled[0].float().cpu())

    def apply(self, batch: FrozenBatch, rows: list[int]) -> FrozenBatch:
        """These rows become the empty prompt. Row indices come from the host (no data-dependent indexing on
        the device): the rows are copied in with index_copy wherever the batch lives."""
        if not rows:
            return batch
        device, n = batch.zh_ids.device, len(rows)
        at = torch.tensor(rows, device=device)
        zh = batch.zh_ids.index_copy(0, at, self.zh_ids.to(device).expand(n, -1))
        en = batch.en_states.index_copy(0, at, self.en_states.to(device, batch.en_states.dtype).expand(n, -1, -1))
        targets = batch.targets
        if targets is not None:
            if self.layers is None:
                raise ValueError("EmptyPrompt: batches with cached targets need the cross-attention layers")
            with torch.no_grad():
                targets = {name: v.index_copy(0, at, attend(self.layers[name], batch.queries[name].index_select(0, at),
                                                             en.index_select(0, at)).to(v.dtype))
                           for name, v in targets.items()}
        added = batch.added_cond
        if added is not None:
            if self.en_pooled is None:
                raise ValueError("EmptyPrompt: SDXL batches need the English pooled embedding of \"\" "
                                 "(pair it with base.english(['']))")
            pooled = self.en_pooled.to(device, added["text_embeds"].dtype).expand(n, -1)
            added = added | {"text_embeds": added["text_embeds"].index_copy(0, at, pooled)}
        return replace(batch, zh_ids=zh, en_states=en, targets=targets, added_cond=added)


class Teacher:
    """The frozen UNet with capture processors: English passes (no grad) and Chinese passes (grad).
    Inputs are moved to the UNet's device and cast to its dtype here, wherever the batch came from."""

    def __init__(self, base: FrozenBase):
        self.unet = base.unet
        self.scheduler = base.noise_scheduler
        self.layers = install_capture(self.unet)

    def added_cond(self, batch: FrozenBatch) -> dict[str, torch.Tensor] | None:
        """SDXL's pooled embedding and time ids, on the UNet's device and dtype; None for SD 1.x/2.x. The
        Chinese pass takes the English ones too: with injected queries (pivot) they cannot reach the recorded
        attention outputs, and the Chinese pooled embedding is matched on its own (PooledMatch)."""
        if batch.added_cond is None:
            if getattr(self.unet.config, "addition_embed_type", None) == "text_time":
                raise ValueError("this UNet (SDXL) needs the batch's added_cond: text_embeds and time_ids")
            return None
        return {k: v.to(self.unet.device, self.unet.dtype) for k, v in batch.added_cond.items()}

    def noisy_latents(self, batch: FrozenBatch) -> torch.Tensor:
        device = self.unet.device
        latents, noise = batch.latents.to(device).float(), batch.noise.to(device).float()
        return self.scheduler.add_noise(latents, noise, batch.timesteps.to(device)).to(self.unet.dtype)

    @torch.no_grad()
    def english_pass(self, batch: FrozenBatch) -> tuple[dict, dict, torch.Tensor]:
        """Queries and attention outputs of every cross-attention layer, and eps, with English states."""
        noisy, t = self.noisy_latents(batch), batch.timesteps.to(self.unet.device)
        with recording() as rec:
            eps = self.unet(noisy, t, batch.en_states.to(self.unet.device, self.unet.dtype),
                            added_cond_kwargs=self.added_cond(batch)).sample
        return rec.queries, rec.outputs, eps

    def chinese_pass(self, batch: FrozenBatch, zh_states: torch.Tensor,
                     inject: dict[str, torch.Tensor] | None = None) -> tuple[dict, torch.Tensor]:
        """Attention outputs and eps with Chinese states, with gradients; optionally with injected queries."""
        noisy, t = self.noisy_latents(batch), batch.timesteps.to(self.unet.device)
        with recording(inject=inject) as rec:
            eps = self.unet(noisy, t, zh_states.to(self.unet.dtype), added_cond_kwargs=self.added_cond(batch)).sample
        return rec.outputs, eps


def layer_weights(names: list[str], overrides: dict[str, float] | None) -> dict[str, float]:
    """Weight 1 per layer unless a key of `overrides` is a prefix of the layer name (first match wins)."""
    overrides = overrides or {}
    return {n: next((w for p, w in overrides.items() if n.startswith(p)), 1.0) for n in names}


def layer_mse(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
              weights: dict[str, float]) -> torch.Tensor:
    if not target:
        raise ValueError("no cross-attention targets: nothing was recorded for this batch")
    total = sum(weights[n] * F.mse_loss(pred[n].float(), target[n].float()) for n in target)
    return total / sum(weights[n] for n in target)


class PivotObjective:
    """IAP with shared queries. Needs only the layers when the batch carries queries and targets."""

    name = "pivot"

    def __init__(self, layers: dict[str, Attention], teacher: Teacher | None = None,
                 weights: dict[str, float] | None = None):
        self.layers, self.teacher = layers, teacher
        self.weights = layer_weights(list(layers), weights)

    def targets(self, batch: FrozenBatch) -> tuple[dict, dict]:
        if batch.queries is not None:
            return batch.queries, batch.targets
        if self.teacher is None:
            raise ValueError("pivot: the batch carries no queries/targets and no teacher UNet was loaded")
        queries, outputs, _ = self.teacher.english_pass(batch)
        return queries, outputs

    def __call__(self, zh_states: torch.Tensor, batch: FrozenBatch) -> torch.Tensor:
        queries, targets = self.targets(batch)
        pred = {n: attend(self.layers[n], queries[n], zh_states) for n in targets}
        return layer_mse(pred, targets, self.weights)


class SeparateObjective:
    """IAP with separate passes: the Chinese side computes its own queries through the frozen UNet."""

    name = "separate"

    def __init__(self, teacher: Teacher, weights: dict[str, float] | None = None):
        self.teacher = teacher
        self.weights = layer_weights(list(teacher.layers), weights)

    def __call__(self, zh_states: torch.Tensor, batch: FrozenBatch) -> torch.Tensor:
        _, targets, _ = self.teacher.english_pass(batch)
        pred, _ = self.teacher.chinese_pass(batch, zh_states)
        return layer_mse(pred, targets, self.weights)


class EpsDistillObjective:
    """Baseline: the UNet's noise prediction with Chinese states matches the one with English states."""

    name = "eps-distill"

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def __call__(self, zh_states: torch.Tensor, batch: FrozenBatch) -> torch.Tensor:
        _, _, eps_en = self.teacher.english_pass(batch)
        _, eps_zh = self.teacher.chinese_pass(batch, zh_states)
        return F.mse_loss(eps_zh.float(), eps_en.float())


class EmbeddingMseObjective:
    """Baseline (text only): token-wise MSE between Chinese and English encoder states."""

    name = "embedding-mse"

    def __call__(self, zh_states: torch.Tensor, batch: FrozenBatch) -> torch.Tensor:
        return F.mse_loss(zh_states.float(), batch.en_states.float())


class PooledMatch:
    """An objective over states, plus (SDXL, where the Chinese side returns (states, pooled)) `weight` times the
    MSE of the pooled embedding to the English one. The pooled embedding shifts every UNet block through the
    time embedding, so no attention output sees it: left untrained, it stays the English towers' reading of
    Chinese tokens."""

    def __init__(self, objective, weight: float = 1.0):
        self.objective, self.weight = objective, weight

    def __getattr__(self, name: str):  # the wrapped objective's name, layers, weights, teacher
        return getattr(self.objective, name)

    def __call__(self, zh: torch.Tensor | tuple[torch.Tensor, torch.Tensor], batch: FrozenBatch) -> torch.Tensor:
        if not isinstance(zh, tuple):
            return self.objective(zh, batch)
        states, pooled = zh
        loss = self.objective(states, batch)
        if self.weight:
            target = batch.added_cond["text_embeds"].to(pooled.device)
            loss = loss + self.weight * F.mse_loss(pooled.float(), target.float())
        return loss


def states_of(zh: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The states the UNet attends over, from a Chinese encoder's output (SDXL's is (states, pooled))."""
    return zh[0] if isinstance(zh, tuple) else zh


def make_objective(name: str, teacher: Teacher | None, weights: dict[str, float] | None = None,
                   layers: dict[str, Attention] | None = None, pooled_weight: float = 1.0) -> PooledMatch:
    """Build an objective by name (with the pooled term, which only SDXL's Chinese side engages). `pivot` works
    without a teacher when given `layers` (cached targets)."""
    return PooledMatch(_objective(name, teacher, weights, layers), pooled_weight)


def _objective(name: str, teacher: Teacher | None, weights: dict[str, float] | None,
               layers: dict[str, Attention] | None):
    if name == "pivot":
        return PivotObjective(layers if layers is not None else teacher.layers, teacher, weights)
    if name == "embedding-mse":
        return EmbeddingMseObjective()
    if teacher is None:
        raise ValueError(f"objective '{name}' needs the frozen UNet")
    if name == "separate":
        return SeparateObjective(teacher, weights)
    if name == "eps-distill":
        return EpsDistillObjective(teacher)
    raise ValueError(f"unknown objective '{name}'; choose one of {', '.join(OBJECTIVES)}")
