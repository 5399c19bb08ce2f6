"""The frozen English base: UNet, VAE, CLIP text encoder(s) + tokenizer(s), and the noise schedule.

SD 1.x/2.x condition the UNet on one tower's last hidden state. SDXL conditions it on two towers'
penultimate states, concatenated, and on tower 2's pooled embedding with the image's time ids (the added
time embedding): `english` returns both parts, built exactly as the stock pipelines build them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from iap.errors import IapError
from iap.models.compat import check_base
from iap.models.hub import is_local, revision
from iap.models.xl import is_xl, read_towers
from iap.system.runtime import CPU, Runtime, place


@dataclass
class FrozenBase:
    """The frozen parts of an English Stable Diffusion model, all in eval mode with requires_grad=False."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    source: str
    fingerprint: str
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's second tower
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, runtime: Runtime) -> FrozenBase:
        """Move and cast the frozen parts (in place) to the runtime's device and precision."""
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is not None:
                place(module, runtime)
        return self

    def encode_english(self, texts: list[str]) -> torch.Tensor:
        """The English states the UNet attends over (B, L, cross_attention_dim)."""
        return self.english(texts)[0]

    def english(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(states, pooled): SDXL's pooled embedding (B, P), None for SD 1.x/2.x."""
        if not self.is_xl:
            return encode_english(self.text_encoder, self.tokenizer, texts), None
        return encode_english_xl([self.text_encoder, self.text_encoder_2], [self.tokenizer, self.tokenizer_2], texts)

    def added_cond(self, pooled: torch.Tensor | None, latents: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """SDXL's added-embedding inputs (host memory, fp32) for pooled English embeddings and the latents of
        their images; None for SD 1.x/2.x (no pooled embedding)."""
        if pooled is None:
            return None
        return {"text_embeds": pooled.float().cpu(), "time_ids": self.time_ids(latents)}

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's time ids of images encoded to `latents`, as its pipeline builds them at their size: original
        size, crop (0, 0), target size, in pixels (B, 6)."""
        h, w = (n * 2 ** (len(self.vae.config.block_out_channels) - 1) for n in latents.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).expand(len(latents), -1)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, sample_seeds: list[int] | None = None) -> torch.Tensor:
        """VAE latents scaled as the UNet expects, on the device in the VAE's dtype; pixels in [-1, 1]. The
        posterior mean, or with `sample_seeds` a posterior sample per image from its seeded CPU draw (the same
        latent on every device). The project's one VAE encode."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = dist.mean
        if sample_seeds is not None:
            latents = latents + dist.std * noise_from_seeds(sample_seeds, latents.shape[1:]).to(latents)
        return latents * self.vae.config.scaling_factor


def noise_from_seeds(seeds, shape: tuple[int, ...]) -> torch.Tensor:
    """One seeded CPU draw per seed (ints or an int64 tensor): the same noise on every device."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def encode_english(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """English hidden states exactly as StableDiffusionPipeline.encode_prompt builds them."""
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    device = text_encoder.device
    mask = ids.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]


@torch.no_grad()
def encode_english_xl(text_encoders: list, tokenizers: list[CLIPTokenizer],
                      texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's (states, pooled) exactly as StableDiffusionXLPipeline.encode_prompt builds them: each tower reads
    its own tokenizer's ids."""
    ids = [tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids for tok in tokenizers]
    return read_towers(*text_encoders, *ids)


def english_empty_states(source: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base's English (states, pooled) of "" ((1, L, D), SDXL's (1, P) or None), loading only its
    tokenizers and text encoders."""
    pinned = {"use_safetensors": True, "revision": revision(source)}
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **pinned).eval()
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision(source))
    if not is_xl(source):
        return encode_english(text_encoder, tokenizer, [""]), None
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **pinned).eval()
    tokenizer_2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", revision=revision(source))
    return encode_english_xl([text_encoder, text_encoder_2], [tokenizer, tokenizer_2], [""])


def english_max_length(source: str) -> int:
    """The padded prompt length of the base (its tokenizer's model_max_length), without loading any weights."""
    return int(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision(source)).model_max_length)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def weights_fingerprint(source: str) -> str:
    """Content hash of a local model folder's weights and configs; for a hub id, the id and the commit it
    resolves to (the revision every load in this process pins)."""
    if not is_local(source):
        return f"hub:{source}@{revision(source)}"
    path = Path(source)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            h.update(str(f.relative_to(path)).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def check_source(source: str) -> None:
    path = Path(source)
    if is_local(source) and not path.is_dir():
        raise IapError(f"base model folder '{source}' does not exist (give a diffusers folder or a hub id like "
                       "'stable-diffusion-v1-5/stable-diffusion-v1-5')")
    if path.is_dir() and not (path / "model_index.json").exists() and not (path / "unet").is_dir():
        raise IapError(f"'{source}' is not a diffusers Stable Diffusion folder: no model_index.json or unet/")


def load_base(source: str | Path, runtime: Runtime = CPU) -> FrozenBase:
    """Load the frozen base from a Hugging Face id or a local diffusers folder (safetensors only), placed on
    the runtime's device in its precision."""
    source = str(source)
    check_source(source)
    if Path(source, "model_index.json").exists() or not is_local(source):
        check_base(source)
    try:
        # in the run's precision from the start (a bf16 run never holds an fp32 copy), at the pinned revision
        pinned = {"revision": revision(source), "torch_dtype": runtime.dtype, "use_safetensors": True}
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **pinned)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **pinned)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **pinned)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision(source))
        xl = {}
        if is_xl(source):
            xl = {"text_encoder_2": _freeze(CLIPTextModelWithProjection.from_pretrained(
                      source, subfolder="text_encoder_2", **pinned)),
                  "tokenizer_2": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", revision=revision(source))}
        scheduler_config = json.loads(Path(source, "scheduler", "scheduler_config.json").read_text()) \
            if Path(source).is_dir() else DDPMScheduler.load_config(source, subfolder="scheduler",
                                                                    revision=revision(source))
    except (OSError, ValueError) as e:
        raise IapError(f"could not load base model '{source}': {str(e).splitlines()[0]}") from e
    if tokenizer.model_max_length > 10_000:  # a tokenizer without model_max_length would pad to 1e30
        raise IapError(f"base model '{source}': tokenizer/tokenizer_config.json lacks model_max_length")
    noise = DDPMScheduler.from_config(scheduler_config)
    return FrozenBase(
        unet=_freeze(unet), vae=_freeze(vae), text_encoder=_freeze(text_encoder),
        tokenizer=tokenizer, noise_scheduler=noise, source=source, fingerprint=weights_fingerprint(source), **xl,
    ).to(runtime)
