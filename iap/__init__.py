"""iap: transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots)."""

__version__ = "0.1.0"
