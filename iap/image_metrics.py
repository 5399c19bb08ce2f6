"""Image-level metrics for generated images.

consistency      mean absolute pixel difference (0..1) between the image generated from the
                 Chinese prompt and the one from the English prompt, same seed and sampler.
fid              Frechet distance between two image sets' features (torchmetrics); the feature
                 extractor is injectable (an Inception v3 weights file for the standard FID, or
                 any nn.Module mapping images in [0, 1] to feature vectors).
clip_score       torchmetrics CLIPScore of images against texts with a CLIP model id or folder.
shapes semantic  for the shapes world: the dominant colour of the border (background) and of the
                 centre region that differs from it (the shape), matched to the palette by
                 nearest RGB; accuracy against the prompt's colours. Needs no learned model.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from iap.data.shapes import COLORS


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1]."""
    return torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                        for i in images])


def consistency(zh_images: list[Image.Image], en_images: list[Image.Image]) -> float:
    return (to_tensor(zh_images) - to_tensor(en_images)).abs().mean().item()


def fid(real: torch.Tensor, fake: torch.Tensor, feature: torch.nn.Module | None = None,
        inception_weights: str | None = None) -> float:
    """FID of two (N, 3, H, W) [0, 1] image sets, with an injected extractor or Inception weights."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    if feature is None and inception_weights is None:
        raise ValueError("fid needs a feature extractor module or an Inception weights path")
    kwargs = {"feature": feature} if feature is not None else {
        "feature": 2048, "feature_extractor_weights_path": inception_weights}
    metric = FrechetInceptionDistance(normalize=True, input_img_size=tuple(real.shape[1:]), **kwargs)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute().item()


class _TensorFeatures(torch.nn.Module):
    """transformers >= 5 returns output objects from get_*_features (the projected embedding is
    `pooler_output`); torchmetrics' CLIPScore expects tensors."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        out = self.model.get_image_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        out = self.model.get_text_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)


def clip_score(images: torch.Tensor, texts: list[str], model: str) -> float:
    """torchmetrics CLIP score (0..100) of (N, 3, H, W) [0, 1] images against texts; `model` is a CLIP
    hub id or a local folder (safetensors)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    def load():
        from transformers import CLIPModel, CLIPProcessor
        return _TensorFeatures(CLIPModel.from_pretrained(model, use_safetensors=True)), \
            CLIPProcessor.from_pretrained(model)

    metric = CLIPScore(model_name_or_path=load)
    return metric((images * 255).to(torch.uint8), texts).item()


def _nearest(rgb: np.ndarray) -> str:
    names = list(COLORS)
    palette = np.array([COLORS[n][1] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


def shape_colours(image: Image.Image) -> tuple[str, str]:
    """(shape colour, background colour) of a shapes-world image by pixel statistics."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = np.median(border, axis=0)
    h, w = a.shape[:2]
    centre = a[h // 6: h - h // 6, w // 6: w - w // 6].reshape(-1, 3)
    differs = np.abs(centre - background).sum(1) > 60
    shape = np.median(centre[differs], axis=0) if differs.sum() >= 4 else background
    return _nearest(shape), _nearest(background)


def shapes_accuracy(images: list[Image.Image], colors: list[str], backgrounds: list[str]) -> dict[str, float]:
    found = [shape_colours(i) for i in images]
    shape_ok = [f[0] == c for f, c in zip(found, colors, strict=True)]
    bg_ok = [f[1] == b for f, b in zip(found, backgrounds, strict=True)]
    return {"shape_colour_accuracy": float(np.mean(shape_ok)), "background_colour_accuracy": float(np.mean(bg_ok)),
            "colour_accuracy": float(np.mean([s and b for s, b in zip(shape_ok, bg_ok, strict=True)]))}
