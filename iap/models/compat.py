"""The support policy: which bases iap transfers and which Chinese encoders fit them, from configs alone
(before any weight is read). Above hub, chinese, projection and xl, so none of them imports another through it."""

from __future__ import annotations

from iap.errors import IapError
from iap.models.chinese import needs_projection
from iap.models.hub import read_config, read_json
from iap.models.projection import output_width
from iap.models.xl import is_xl

SUPPORTED = ("Stable Diffusion 1.x and 2.x bases (StableDiffusionPipeline: a UNet with cross-attention over one "
             "CLIP text encoder) and SDXL bases (StableDiffusionXLPipeline: two CLIP text encoders, a pooled embedding)")


def check_base(source: str) -> None:
    """The base is a family IAP supports, from its model_index.json alone; otherwise one message naming what
    it is and what is supported."""
    index = read_json(source, "model_index.json")
    kind = index.get("_class_name", "this pipeline")
    if "transformer" in index and "unet" not in index:
        why = "its denoiser is a transformer with joint or DiT attention (SD3, FLUX, PixArt, ...), not a UNet"
    elif "unet" not in index or "text_encoder" not in index:
        why = "it has no UNet conditioned on a text encoder"
    else:
        return
    raise IapError(f"base '{source}' is a {kind}: {why}. iap supports {SUPPORTED}.")


def check_pair(base: str, zh_encoder: str) -> None:
    """The Chinese encoder's width must equal the base UNet's cross_attention_dim, or the encoder must be able to
    take a learned projection to it: checked from configs, before any weights."""
    check_base(base)
    if is_xl(base):
        return  # SDXL: the Chinese side is the base's own towers with the encoder's vocabulary (iap.models.xl)
    dim = read_config(base, "unet").get("cross_attention_dim")
    config = read_config(zh_encoder)
    if dim is None or output_width(config) is None:
        raise IapError(f"cannot check '{zh_encoder}' against '{base}': "
                       f"{'unet/config.json has no cross_attention_dim' if dim is None else 'no hidden_size in config'}")
    needs_projection(config, int(dim), zh_encoder)  # raises when it fits neither as it is nor projected
