"""Image-level metrics for generated images.

consistency      mean absolute pixel difference (0..1) between the image generated from the
                 Chinese prompt and the one from the English prompt, same seed and sampler.
fid              Frechet distance between two image sets' features (torchmetrics); the feature
                 extractor is injectable (an Inception v3 weights file for the standard FID, or
                 any nn.Module mapping images in [0, 1] to feature vectors).
clip_score       torchmetrics CLIPScore of images against texts with a CLIP model id or folder.
shapes semantic  for the shapes world: the dominant colour of the border (background) and of the
                 centre region that differs from it (the shape), matched to the palette by
                 nearest RGB; the shape class from the mask of that region (the shape drawn
                 into the mask's bounding box that overlaps it best). Accuracy against the
                 prompt's colours and shape. Needs no learned model.
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


def _background(a: np.ndarray) -> np.ndarray:
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)


def shape_colours(image: Image.Image) -> tuple[str, str]:
    """(shape colour, background colour) of a shapes-world image by pixel statistics."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = _background(a)
    h, w = a.shape[:2]
    centre = a[h // 6: h - h // 6, w // 6: w - w // 6].reshape(-1, 3)
    differs = np.abs(centre - background).sum(1) > 60
    shape = np.median(centre[differs], axis=0) if differs.sum() >= 4 else background
    return _nearest(shape), _nearest(background)


def _outline(shape: str, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """The mask of `shape` drawn as the shapes world draws it, filling box = (left, top, right, bottom)."""
    from PIL import ImageDraw
    img = Image.new("1", size, 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    cx, cy = (left + right) / 2, (top + bottom) / 2
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=1)
    else:
        draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=1)
    return np.asarray(img, dtype=bool)


def shape_class(image: Image.Image) -> str:
    """circle / square / triangle / diamond (or none): the mask of pixels that differ from the background
    is compared with each shape drawn into the mask's bounding box; the best overlap (IoU) wins."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.abs(a - _background(a)).sum(2) > 60
    mask[[0, -1]] = False
    mask[:, [0, -1]] = False
    rows, cols = np.nonzero(mask)
    if len(rows) < 4:
        return "none"
    box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    size = (mask.shape[1], mask.shape[0])
    iou = {s: (mask & o).sum() / max((mask | o).sum(), 1)
           for s in ("circle", "square", "triangle", "diamond") for o in [_outline(s, size, box)]}
    return max(iou, key=iou.get)


def shapes_accuracy(images: list[Image.Image], colors: list[str], backgrounds: list[str],
                    classes: list[str] | None = None) -> dict[str, float]:
    found = [shape_colours(i) for i in images]
    shape_ok = [f[0] == c for f, c in zip(found, colors, strict=True)]
    bg_ok = [f[1] == b for f, b in zip(found, backgrounds, strict=True)]
    out = {"shape_colour_accuracy": float(np.mean(shape_ok)), "background_colour_accuracy": float(np.mean(bg_ok)),
           "colour_accuracy": float(np.mean([s and b for s, b in zip(shape_ok, bg_ok, strict=True)]))}
    if classes is not None:
        out["shape_class_accuracy"] = float(np.mean([shape_class(i) == c
                                                     for i, c in zip(images, classes, strict=True)]))
    return out
