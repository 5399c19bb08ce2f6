"""A Chinese encoder of another width than the UNet's cross-attention, as a class stock diffusers loads.

StableDiffusionPipeline conditions the UNet on `text_encoder(ids)[0]`. transformers' AltCLIPTextModel (the
text tower AltDiffusion shipped) is a RoBERTa encoder, a LayerNorm and a Linear to `project_dim`, and its
output[0] is the projected states. A BERT- or RoBERTa-family Chinese encoder (hfl's RoBERTa-wwm is a BERT)
is copied into one whose project_dim is the UNet's cross_attention_dim: the whole tower trains with IAP, and
the export is an ordinary `transformers.AltCLIPTextModel` folder, loaded with no project code.
"""

from __future__ import annotations

import torch
from transformers import AltCLIPTextConfig, AltCLIPTextModel, PreTrainedModel

from iap.errors import IapError

# BERT numbers positions from 0; RoBERTa from pad_token_id + 1 (pads sit at pad_token_id)
BERT_POSITIONS = {"bert", "chinese_clip_text_model"}
ROBERTA_POSITIONS = {"roberta", "xlm-roberta"}
PROJECTABLE = BERT_POSITIONS | ROBERTA_POSITIONS
PROJECTED = "altclip_text_model"
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                 "initializer_range", "layer_norm_eps", "pad_token_id")
SEED = 0  # the projection's initial weights: the same run key gives the same bytes


def output_width(config: dict) -> int | None:
    """The width of the states an encoder hands the UNet: its projection's when it has one."""
    if config.get("model_type") == PROJECTED:
        return int(config["project_dim"])
    value = config.get("hidden_size", config.get("text_config", {}).get("hidden_size"))
    return None if value is None else int(value)


def can_project(config: dict) -> bool:
    return config.get("model_type") in PROJECTABLE or config.get("text_config", {}).get("model_type") in PROJECTABLE


def with_projection(model: PreTrainedModel, width: int) -> AltCLIPTextModel:
    """The same encoder ending in a learned projection to `width`. Every real token's hidden state is the
    original model's (positions re-indexed to RoBERTa's numbering); the projection starts semi-orthogonal
    (norm-preserving) from a fixed seed, and the LayerNorm before it as the identity's normalisation."""
    kind = model.config.model_type
    if kind not in PROJECTABLE:
        raise IapError(f"a Chinese encoder of type '{kind}' cannot take a projection to width {width}; "
                       f"supported: {', '.join(sorted(PROJECTABLE))} (or one whose hidden size is {width})")
    source = model.config
    pad = int(source.pad_token_id or 0)
    shift = pad + 1 if kind in BERT_POSITIONS else 0
    config = AltCLIPTextConfig(**{f: getattr(source, f) for f in CONFIG_FIELDS}, project_dim=width,
                               max_position_embeddings=source.max_position_embeddings + shift)
    projected = AltCLIPTextModel(config)
    weights = {"roberta." + k.replace("encoder.layer.", "encoder.layers."): v for k, v in model.state_dict().items()
               if not k.startswith("pooler.")}
    positions = weights["roberta.embeddings.position_embeddings.weight"]
    if shift:  # BERT's position i is RoBERTa's pad + 1 + i; pads read the row at pad_token_id
        positions = torch.cat([positions[:1].expand(shift, -1), positions])
    weights["roberta.embeddings.position_embeddings.weight"] = positions
    with torch.no_grad():
        torch.nn.init.orthogonal_(projected.transformation.weight, generator=torch.Generator().manual_seed(SEED))
        projected.transformation.bias.zero_()
        projected.pre_LN.reset_parameters()
    missing, unexpected = projected.load_state_dict(weights, strict=False)
    if set(missing) - {"pre_LN.weight", "pre_LN.bias", "transformation.weight", "transformation.bias"} or unexpected:
        raise IapError(f"cannot copy the '{kind}' encoder into a projected one (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return projected.train(model.training)
