"""Image-level metrics for generated images.

consistency      mean absolute pixel difference (0..1) between the image generated from the
                 Chinese prompt and the one from the English prompt, same seed and sampler.
kid              Kernel Inception Distance (torchmetrics): unbiased at small sample counts, so it is the
                 set-level score an evaluation of tens of prompts reports.
fid              Frechet distance between two image sets' features (torchmetrics); biased and noisy
                 below thousands of images (its covariance of 2048-d features is not even full rank
                 under 2048), so it is reported only for more images than feature dimensions.
                 For both the feature extractor is injectable (an Inception v3 weights file for the
                 standard scores, or any nn.Module mapping images in [0, 1] to feature vectors).
clip_score       torchmetrics CLIPScore of images against texts with a CLIP model id or folder.

What an image should show for its prompt is a data world's business (iap.evaluation.worlds; the shapes world scores
colours and shapes in iap.shapes.metrics).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


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


def kid(real: torch.Tensor, fake: torch.Tensor, feature: torch.nn.Module | None = None,
        inception_weights: str | None = None, subsets: int = 100) -> float:
    """KID (mean over `subsets` random subsets of up to 1000 images each) of two (N, 3, H, W) [0, 1] sets."""
    from torchmetrics.image.kid import KernelInceptionDistance
    if feature is None and inception_weights is None:
        raise ValueError("kid needs a feature extractor module or an Inception weights path")
    kwargs = {"feature": feature} if feature is not None else {
        "feature": 2048, "feature_extractor_weights_path": inception_weights}
    torch.manual_seed(0)  # the subsets are drawn at random: the same sets give the same score
    metric = KernelInceptionDistance(normalize=True, subsets=subsets, subset_size=min(len(real), len(fake), 1000),
                                     **kwargs)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()[0].item()


def fid_is_meaningful(n: int, feature: torch.nn.Module | None, image: torch.Tensor) -> bool:
    """More images than feature dimensions (2048 for Inception): below that FID's covariance is rank-deficient."""
    if feature is None:
        return n > 2048
    with torch.no_grad():
        return n > feature(image[:1]).shape[-1]


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
