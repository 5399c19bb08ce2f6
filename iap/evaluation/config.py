"""The evaluation stage's settings, apart from its torch code: the CLI and the flows read them at start-up."""

from __future__ import annotations

from pydantic import Field

from iap.config import StageConfig


class EvalConfig(StageConfig):
    """What is evaluated, within a fixed budget, and how images are generated for the generation metrics."""

    samples: int = Field(64, ge=0, description="held-out prompts to draw (one per combo in the shapes world); "
                                              "0: no generation metrics")
    steps: int = Field(20, ge=1, description="DDIM steps")
    guidance_scale: float = Field(7.5, ge=1.0, description="classifier-free guidance (small models: lower)")
    seed: int = 0
    pairs: int = Field(256, ge=2, description="held-out pairs for the losses and retrieval (the split's first N)")
    probe_positions: int = Field(16, ge=1, description="retrieval: probe query positions per layer and probe")
    batch_size: int | None = Field(None, ge=1, description="samples per UNet pass (losses, features, generation); "
                                                          "None: 8 at SD-1.5's 64x64 latents, more for smaller ones")
    inception: str | None = Field(None, description="KID (and FID above 2048 samples): torchmetrics Inception "
                                  "weights file (else neither)")
    clip_model: str | None = Field(None, description="CLIP score: a CLIP HF id or folder (else no CLIP score)")
