"""iap: transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots)."""

from iap.quiet import quiet_libraries

quiet_libraries()  # before transformers/diffusers are first imported: they read these once

__version__ = "0.1.0"
