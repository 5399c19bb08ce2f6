"""Generate images from an exported (or any) Stable Diffusion folder."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from iap.errors import IapError
from iap.models.xl import is_xl
from iap.system.runtime import CPU, Runtime


def load_pipeline(folder: str | Path, runtime: Runtime = CPU) -> StableDiffusionPipeline:
    """An exported (or any) SD folder, loaded in the runtime's precision and placed on its device."""
    if not Path(folder).is_dir():
        raise IapError(f"pipeline folder '{folder}' does not exist")
    try:
        if pipeline_class(folder) is StableDiffusionXLPipeline:
            pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=runtime.dtype)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                           dtype=runtime.dtype)
        pipe = pipe.to(runtime.device)
    except (OSError, ValueError) as e:
        raise IapError(f"could not load pipeline '{folder}': {str(e).splitlines()[0]}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_class(folder: str | Path) -> type:
    """StableDiffusionXLPipeline for a folder with two text encoders, else StableDiffusionPipeline."""
    return StableDiffusionXLPipeline if is_xl(str(folder)) else StableDiffusionPipeline


def generate(pipe: StableDiffusionPipeline, prompts: list[str], seed: int = 0, steps: int = 25,
             guidance_scale: float = 7.5, batch_size: int = 16) -> list[Image.Image]:
    """One image per prompt; prompt i uses generator seed `seed + i` (whatever the batching), so zh/en
    pairs can share seeds."""
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise IapError("no prompt given: pass at least one non-empty prompt")
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        generators = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators).images
    return images
