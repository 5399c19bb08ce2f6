"""The trainable Chinese text encoder: any Hugging Face encoder plus its tokenizer.

It is used exactly as StableDiffusionPipeline uses a text encoder (pad to max length, output [0]),
so an exported pipeline behaves at inference as the encoder did in training. An encoder of another width
than the UNet's cross-attention gets a learned projection (iap.models.projection). On an SDXL base the
Chinese side is the base's two towers with the encoder's vocabulary (iap.models.xl), and it returns
(states, pooled).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from iap.errors import IapError
from iap.models.hub import is_local, revision
from iap.models.projection import PROJECTED, can_project, output_width, with_projection
from iap.models.xl import DualTower, chinese_towers, is_towers_folder, is_xl

ENCODERS_THAT_FIT = {
    768: ["hfl/chinese-roberta-wwm-ext", "OFA-Sys/chinese-clip-vit-base-patch16 (text tower)",
          "IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese"],
    1024: ["hfl/chinese-roberta-wwm-ext-large", "OFA-Sys/chinese-clip-vit-huge-patch14 (text tower)"],
}


class ChineseEncoder(torch.nn.Module):
    """A Chinese encoder + tokenizer, padded/truncated to the English side's length."""

    def __init__(self, model: PreTrainedModel, tokenizer, max_length: int, source: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.model_max_length = max_length  # the pipeline pads to this at inference
        self.max_length = max_length
        self.source = source

    @property
    def is_xl(self) -> bool:
        return isinstance(self.model, DualTower)

    @property
    def hidden_size(self) -> int:
        """The width of the states it hands the UNet (its projection's, when it has one)."""
        return self.model.width if self.is_xl else output_width(self.model.config.to_dict())

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The states the UNet attends over; on SDXL, (states, pooled)."""
        if self.is_xl:
            return self.model(input_ids.to(self.model.device))
        mask = None
        if getattr(self.model.config, "use_attention_mask", False):  # as the pipeline decides
            mask = (input_ids != self.tokenizer.pad_token_id).long()
        return self.model(input_ids.to(self.model.device), attention_mask=mask)[0]


def needs_projection(config: dict, cross_attention_dim: int, source: str) -> bool:
    """Whether the encoder needs a learned projection to the UNet's width (True) or fits as it is (False); an
    IapError when it fits neither way."""
    width = output_width(config)
    if width == cross_attention_dim:
        return False
    if config.get("model_type") != PROJECTED and can_project(config):
        return True
    fits = ENCODERS_THAT_FIT.get(cross_attention_dim, [])
    hint = f" Encoders that fit without a projection: {', '.join(fits)}." if fits else ""
    raise IapError(
        f"Chinese encoder '{source}' has hidden size {width}, but the UNet's cross_attention_dim is "
        f"{cross_attention_dim}, and a '{config.get('model_type')}' encoder cannot take a learned projection "
        f"(BERT and RoBERTa families can).{hint}"
    )


def load_text_model(source: str, **kwargs) -> PreTrainedModel:
    """A text model by its config's class: AutoModel, or transformers' own AltCLIPTextModel (a projected
    encoder, which AutoModel does not map). Never remote code."""
    config = AutoConfig.from_pretrained(source, revision=kwargs.get("revision"))
    if config.model_type == PROJECTED:
        return transformers.AltCLIPTextModel.from_pretrained(source, **kwargs)
    return AutoModel.from_pretrained(source, **kwargs)


def load_chinese_encoder(source: str | Path, cross_attention_dim: int, max_length: int = 77,
                         device: str | torch.device = "cpu", base: str | None = None) -> ChineseEncoder:
    """Load any HF encoder (BERT / RoBERTa / Chinese-CLIP text tower) and check it fits the UNet. Its tokenizer
    pads to `max_length` whatever its own config says (hfl's tokenizer_config has no model_max_length).
    On an SDXL `base`, or from a saved SDXL Chinese side, the Chinese side is two CLIP towers (iap.models.xl)."""
    source = str(source)
    if is_local(source) and not Path(source).is_dir():
        raise IapError(f"Chinese encoder folder '{source}' does not exist")
    if is_towers_folder(source) or (base is not None and is_xl(base)):
        return _load_towers(source, base, max_length).to(device)
    try:
        # safetensors when published; else legacy pytorch_model.bin (hfl/chinese-roberta-wwm-ext has only that),
        # read with weights_only=True: tensors only, never arbitrary pickled objects
        model = load_text_model(source, revision=revision(source), weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision(source))
    except (OSError, ValueError, pickle.UnpicklingError) as e:  # unpickling: a .bin holding more than tensors
        raise IapError(f"could not load Chinese encoder '{source}': {str(e).splitlines()[0]}") from e
    if hasattr(model, "text_model"):  # a full CLIP-style model: keep the text tower
        model = model.text_model
    if getattr(model, "pooler", None) is not None:  # unused by diffusion; would get no gradient
        model.pooler = None
    if needs_projection(model.config.to_dict(), cross_attention_dim, source):
        model = with_projection(model, cross_attention_dim)
    positions = getattr(model.config, "max_position_embeddings", max_length)
    if model.config.model_type in ("roberta", "xlm-roberta", PROJECTED):  # numbered from pad_token_id + 1
        positions -= int(model.config.pad_token_id or 0) + 1
    if positions < max_length:
        raise IapError(f"Chinese encoder '{source}' has max_position_embeddings={positions} < max_length={max_length}")
    model.train()
    return ChineseEncoder(model, tokenizer, max_length, source).to(device)


def _load_towers(source: str, base: str | None, max_length: int) -> ChineseEncoder:
    """An SDXL Chinese side: saved (a checkpoint's encoder/), or the base's towers with `source`'s vocabulary."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision(source))
    except (OSError, ValueError) as e:
        raise IapError(f"could not load the tokenizer of Chinese encoder '{source}': {str(e).splitlines()[0]}") from e
    towers = DualTower.from_folder(source) if is_towers_folder(source) else chinese_towers(base, tokenizer, source)
    positions = towers.text_encoder.config.max_position_embeddings
    if positions < max_length:
        raise IapError(f"SDXL text towers have max_position_embeddings={positions} < max_length={max_length}")
    towers.train()
    return ChineseEncoder(towers, tokenizer, max_length, source)
