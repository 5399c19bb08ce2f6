"""Config-only access to a model named by a Hugging Face id or a local folder, before any weight is
loaded: so that a mismatched pair fails before download and precompute, and so that a hub model's
weights are pinned to the revision its fingerprint names."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from iap.errors import IapError


def is_local(source: str) -> bool:
    """A folder path (anything that exists, or does not look like 'org/name')."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


@functools.cache
def revision(source: str) -> str | None:
    """The commit a hub id resolves to now (None for a local folder); every load of it in this process uses it."""
    if is_local(source):
        return None
    try:
        from huggingface_hub import HfApi
        return HfApi().model_info(source).sha
    except Exception as e:  # offline, unknown id, gated: one message, whatever the client raised
        raise IapError(f"could not resolve '{source}' on the Hugging Face hub: {str(e).splitlines()[0]}") from e


def fetch_json(source: str, filename: str) -> dict:
    """One JSON file of a hub model at its pinned revision (downloads that file only)."""
    from huggingface_hub import hf_hub_download
    try:
        return json.loads(Path(hf_hub_download(source, filename, revision=revision(source))).read_text())
    except IapError:
        raise
    except Exception as e:
        raise IapError(f"could not fetch {filename} of '{source}' from the Hugging Face hub: "
                       f"{str(e).splitlines()[0]}") from e


def read_config(source: str, subfolder: str = "") -> dict:
    """config.json of a model (or of one component folder of a pipeline), local or on the hub."""
    return read_json(source, f"{subfolder}/config.json" if subfolder else "config.json")


def read_json(source: str, filename: str) -> dict:
    """One JSON file of a model, local or on the hub."""
    if not is_local(source):
        return fetch_json(source, filename)
    if not Path(source).is_dir():
        raise IapError(f"model folder '{source}' does not exist (give a folder or a hub id like 'org/name')")
    path = Path(source, filename)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise IapError(f"'{source}' has no {filename}: not a model folder") from e
    except (OSError, json.JSONDecodeError) as e:
        raise IapError(f"{path}: cannot read it as JSON ({e})") from e


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
    from iap.models.chinese import check_fits
    from iap.models.projection import output_width
    from iap.models.xl import is_xl
    check_base(base)
    if is_xl(base):
        return  # SDXL: the Chinese side is the base's own towers with the encoder's vocabulary (iap.models.xl)
    dim = read_config(base, "unet").get("cross_attention_dim")
    config = read_config(zh_encoder)
    if dim is None or output_width(config) is None:
        raise IapError(f"cannot check '{zh_encoder}' against '{base}': "
                       f"{'unet/config.json has no cross_attention_dim' if dim is None else 'no hidden_size in config'}")
    check_fits(config, int(dim), zh_encoder)
