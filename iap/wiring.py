"""How a training run is assembled from a cache, on one runtime: the objective and the frozen parts it
needs, the streaming source, the empty-prompt pairing and the Chinese encoder. Used by the CLI, the
train task and `iap compare` alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iap.cache import CacheInfo, CacheSource, load_cached_layers
from iap.config import TrainConfig
from iap.models.base import BaseModel, english_empty_states
from iap.models.chinese import ChineseEncoder, load_chinese_encoder
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.runtime import Runtime


@dataclass
class CacheTraining:
    objective: Callable
    source: CacheSource
    empty: EmptyPrompt
    encoder: ChineseEncoder


def needs_unet(info: CacheInfo, cfg: TrainConfig) -> bool:
    """Store policies train pivot from cached queries and targets alone; everything else runs the UNet."""
    return info.policy == "recompute" or cfg.objective != "pivot"


def from_cache(info: CacheInfo, cfg: TrainConfig, base_source: str, zh_encoder: str, runtime: Runtime,
               load_base_model: Callable[[], BaseModel]) -> CacheTraining:
    """`load_base_model` is called only when the UNet is needed; it must place the base on `runtime`."""
    layers = None
    if needs_unet(info, cfg):
        base = load_base_model()
        en_empty = base.encode_english([""]).float().cpu()  # the loaded base already holds the text encoder
        objective = make_objective(cfg.objective, Teacher(base), cfg.layer_weights)
    else:  # no UNet: the cached cross-attention weights, and only the base's text encoder for ""
        en_empty = english_empty_states(base_source)
        layers = load_cached_layers(info, runtime)
        objective = make_objective("pivot", None, cfg.layer_weights, layers=layers)
    encoder = load_chinese_encoder(zh_encoder, info.cross_attention_dim, max_length=en_empty.shape[1])
    return CacheTraining(objective, CacheSource(info, "train", encoder.tokenize),
                         EmptyPrompt.pair(en_empty, encoder, layers), encoder)
