"""How a training run is assembled, from a cache or live: the objective and the frozen parts it needs, the
source, the empty-prompt pairing and the Chinese encoder, on one runtime. The only place that picks an
objective for a source; used by the CLI, the train task and `iap compare` alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iap.cache.info import CacheInfo
from iap.cache.reader import CacheSource, load_cached_layers
from iap.config import TrainConfig
from iap.models.base import FrozenBase, english_empty_states, english_max_length
from iap.models.chinese import ChineseEncoder, load_chinese_encoder
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.system.runtime import Runtime, place


@dataclass
class TrainingRun:
    objective: Callable
    source: CacheSource
    empty: EmptyPrompt
    encoder: ChineseEncoder


def needs_unet(info: CacheInfo, cfg: TrainConfig) -> bool:
    """Store policies train pivot from cached queries and targets alone; everything else runs the UNet."""
    return info.policy == "recompute" or cfg.objective != "pivot"


@dataclass
class Loaded:
    """What a cache run reads from disk into host memory, before anything is placed on the device."""

    info: CacheInfo
    encoder: ChineseEncoder
    layers: dict | None = None  # store policies: the cached cross-attention weights (host, fp32)
    en_empty: tuple | None = None  # store policies: the base's English (states, pooled or None) of ""


def load(info: CacheInfo, cfg: TrainConfig, base_source: str, zh_encoder: str) -> Loaded:
    """Store policies read the cached layers and only the base's text encoder (for ""), never the UNet."""
    if needs_unet(info, cfg):
        return Loaded(info, load_chinese_encoder(zh_encoder, info.cross_attention_dim, english_max_length(base_source),
                                                 base=base_source))
    en_empty = english_empty_states(base_source)
    encoder = load_chinese_encoder(zh_encoder, info.cross_attention_dim, max_length=en_empty[0].shape[1],
                                   base=base_source)
    return Loaded(info, encoder, load_cached_layers(info), en_empty)


def assemble(loaded: Loaded, cfg: TrainConfig, runtime: Runtime,
             load_base_model: Callable[[], FrozenBase]) -> TrainingRun:
    """Place the frozen side on the runtime and build the objective; `load_base_model` (placed on `runtime`)
    is called only when the UNet is needed."""
    layers, en_empty = loaded.layers, loaded.en_empty
    if layers is None:
        base = load_base_model()
        en_empty = base.english([""])  # the loaded base already holds the text encoder(s)
        teacher = Teacher(base)
        objective = make_objective(cfg.objective, teacher, cfg.layer_weights, pooled_weight=cfg.pooled_weight)
        layers = teacher.layers  # a store cache's batches carry targets, which the empty pairing recomputes
    else:
        layers = {name: place(layer, runtime) for name, layer in layers.items()}
        objective = make_objective("pivot", None, cfg.layer_weights, layers=layers, pooled_weight=cfg.pooled_weight)
    encoder = _pooled_path(loaded.encoder, cfg)
    return TrainingRun(objective, CacheSource(loaded.info, "train", encoder.tokenize),
                       EmptyPrompt.pair(en_empty, encoder, layers), encoder)


def from_cache(info: CacheInfo, cfg: TrainConfig, base_source: str, zh_encoder: str, runtime: Runtime,
               load_base_model: Callable[[], FrozenBase]) -> TrainingRun:
    """The training run of a cache: read (host), then placed on `runtime`."""
    return assemble(load(info, cfg, base_source, zh_encoder), cfg, runtime, load_base_model)


def live(base: FrozenBase, encoder: ChineseEncoder, cfg: TrainConfig, source) -> TrainingRun:
    """Live training over `source` (the frozen passes run every step): the config's objective, on the loaded
    base's UNet unless the objective needs none."""
    teacher = None if cfg.objective == "embedding-mse" else Teacher(base)
    return TrainingRun(make_objective(cfg.objective, teacher, cfg.layer_weights, pooled_weight=cfg.pooled_weight),
                       source, EmptyPrompt.pair(base.english([""]), encoder), _pooled_path(encoder, cfg))


def _pooled_path(encoder: ChineseEncoder, cfg: TrainConfig) -> ChineseEncoder:
    """An SDXL Chinese side trained without the pooled term keeps its pooled path frozen (the English towers')."""
    if encoder.is_xl and cfg.pooled_weight == 0:
        encoder.model.freeze_pooled_path()
    return encoder
