"""The trainable Chinese text encoder: any Hugging Face encoder plus its tokenizer.

It is used exactly as StableDiffusionPipeline uses a text encoder (pad to max length, output [0]),
so an exported pipeline behaves at inference as the encoder did in training. An encoder of another width
than the UNet's cross-attention gets a learned projection (iap.models.projection).
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
    def hidden_size(self) -> int:
        """The width of the states it hands the UNet (its projection's, when it has one)."""
        return output_width(self.model.config.to_dict())

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = None
        if getattr(self.model.config, "use_attention_mask", False):  # as the pipeline decides
            mask = (input_ids != self.tokenizer.pad_token_id).long()
        return self.model(input_ids.to(self.model.device), attention_mask=mask)[0]


def check_fits(config: dict, cross_attention_dim: int, source: str) -> bool:
    """Whether the encoder needs a projection to the UNet's width; an error when it cannot have one."""
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
                         device: str | torch.device = "cpu") -> ChineseEncoder:
    """Load any HF encoder (BERT / RoBERTa / Chinese-CLIP text tower) and check it fits the UNet. Its tokenizer
    pads to `max_length` whatever its own config says (hfl's tokenizer_config has no model_max_length)."""
    source = str(source)
    if is_local(source) and not Path(source).is_dir():
        raise IapError(f"Chinese encoder folder '{source}' does not exist")
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
    if check_fits(model.config.to_dict(), cross_attention_dim, source):
        model = with_projection(model, cross_attention_dim)
    positions = getattr(model.config, "max_position_embeddings", max_length)
    if model.config.model_type in ("roberta", "xlm-roberta", PROJECTED):  # numbered from pad_token_id + 1
        positions -= int(model.config.pad_token_id or 0) + 1
    if positions < max_length:
        raise IapError(f"Chinese encoder '{source}' has max_position_embeddings={positions} < max_length={max_length}")
    model.train()
    return ChineseEncoder(model, tokenizer, max_length, source).to(device)
