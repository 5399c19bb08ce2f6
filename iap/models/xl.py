"""The Chinese side of an SDXL base: the base's two CLIP text towers with a Chinese vocabulary.

StableDiffusionXLPipeline conditions its UNet on hidden_states[-2] of two text towers, concatenated
(768 + 1280 = 2048 for SDXL), and on tower 2's pooled, projected output (text_embeds, 1280) through the
added time embedding. A BERT-family encoder cannot supply these from a folder that the stock pipeline loads,
so the Chinese side is the base's own towers, copied, each with a new token embedding for the Chinese
tokenizer's vocabulary (taken from --zh-encoder; Taiyi-XL also gave CLIP a Chinese vocabulary). Every other
weight starts as the English one, and both towers train. Exported, they are ordinary `CLIPTextModel` and
`CLIPTextModelWithProjection` folders, both read through one Chinese tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from iap.errors import IapError
from iap.models.hub import is_local, read_json, revision

TOWERS = ("text_encoder", "text_encoder_2")
WEIGHTS = "model.safetensors"


def is_xl(source: str) -> bool:
    """Whether a diffusers pipeline (local or hub) conditions on two text towers (SDXL)."""
    if is_local(source) and not Path(source, "model_index.json").exists():
        return Path(source, "text_encoder_2").is_dir()
    return "text_encoder_2" in read_json(source, "model_index.json")


def read_towers(text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection, ids: torch.Tensor,
                ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What SDXL conditions on, as StableDiffusionXLPipeline.encode_prompt reads it: both towers' penultimate
    hidden states, concatenated, and tower 2's pooled, projected output."""
    one = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    two = text_encoder_2(ids_2.to(text_encoder_2.device), output_hidden_states=True)
    return torch.cat([one.hidden_states[-2], two.hidden_states[-2]], -1), two.text_embeds


class DualTower(torch.nn.Module):
    """Two CLIP towers read as SDXL reads them: (concatenated penultimate states, tower 2's pooled embedding)."""

    def __init__(self, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection):
        super().__init__()
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        # tower 1's last layer and final norm feed nothing SDXL reads: frozen, so every trained weight gets a
        # gradient (data-parallel training refuses unused parameters)
        tower = clip_transformer(text_encoder)
        for unused in (tower.encoder.layers[-1], tower.final_layer_norm):
            unused.requires_grad_(False)

    def freeze_pooled_path(self) -> None:
        """Freeze what feeds only the pooled embedding (tower 2's last layer, final norm and projection): for
        a run that does not train it (pooled_weight 0), where they would get no gradient."""
        tower = clip_transformer(self.text_encoder_2)
        for part in (tower.encoder.layers[-1], tower.final_layer_norm, self.text_encoder_2.text_projection):
            part.requires_grad_(False)

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return read_towers(self.text_encoder, self.text_encoder_2, input_ids, input_ids)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """One weights file (what a checkpoint hashes and resumes from) and each tower's config."""
        folder = Path(folder)
        for name in TOWERS:
            getattr(self, name).config.save_pretrained(folder / name)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS)
        (folder / "config.json").write_text(json.dumps({"model_type": "iap-sdxl-chinese-towers",
                                                        "towers": list(TOWERS)}, indent=2))

    @classmethod
    def from_folder(cls, folder: str | Path) -> DualTower:
        folder = Path(folder)
        towers = DualTower(CLIPTextModel(CLIPTextConfig.from_pretrained(folder / TOWERS[0])),
                           CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / TOWERS[1])))
        towers.load_state_dict(load_file(folder / WEIGHTS))
        return towers

    def export(self, folder: str | Path) -> None:
        """Each tower as its own transformers folder, as model_index.json names them."""
        for name in TOWERS:
            getattr(self, name).save_pretrained(Path(folder) / name, safe_serialization=True)


def clip_transformer(tower: CLIPTextModel | CLIPTextModelWithProjection) -> CLIPTextModel:
    """The module holding a tower's embeddings, layers and pooling rule (transformers 5 keeps it at the top of
    CLIPTextModel, under .text_model in CLIPTextModelWithProjection)."""
    return getattr(tower, "text_model", tower)


def is_towers_folder(source: str | Path) -> bool:
    """A saved DualTower (a checkpoint's encoder/), as opposed to a Chinese encoder to start from."""
    return Path(source, TOWERS[1], "config.json").exists() and Path(source, WEIGHTS).exists()


def special_ids(tokenizer, source: str) -> dict[str, int]:
    """The Chinese tokenizer's start, end and pad ids, as CLIP's config names them. The end token is where
    tower 2 pools; id 2 would select transformers' legacy rule (pool at the largest id), so it is refused."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise IapError(f"Chinese tokenizer of '{source}' needs start ([CLS]), end ([SEP]) and pad tokens for SDXL's "
                       "text towers")
    if end == 2:
        raise IapError(f"Chinese tokenizer of '{source}': its end token has id 2, which CLIP text towers read as "
                       "'pool at the largest id'; use a tokenizer whose [SEP] is not id 2")
    return {"bos_token_id": start, "eos_token_id": end, "pad_token_id": tokenizer.pad_token_id}


def chinese_towers(base: str, tokenizer, source: str, seed: int = 0) -> DualTower:
    """The base's two text towers with a new token embedding for `tokenizer`'s vocabulary, drawn from a fixed
    seed with the English embedding's scale (the same run key gives the same bytes)."""
    pinned = {"revision": revision(base), "use_safetensors": True}
    towers = [CLIPTextModel.from_pretrained(base, subfolder=TOWERS[0], **pinned),
              CLIPTextModelWithProjection.from_pretrained(base, subfolder=TOWERS[1], **pinned)]
    ids, vocab = special_ids(tokenizer, source), len(tokenizer)
    g = torch.Generator().manual_seed(seed)
    for tower in towers:
        english = tower.get_input_embeddings().weight
        embedding = torch.nn.Embedding(vocab, english.shape[1])
        with torch.no_grad():
            embedding.weight.copy_(torch.randn(embedding.weight.shape, generator=g) * english.std())
        tower.set_input_embeddings(embedding)
        clip_transformer(tower).eos_token_id = ids["eos_token_id"]  # where it pools: the Chinese [SEP]
        tower.config.update({"vocab_size": vocab, **ids})
    return DualTower(*towers)
