"""iap: transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots)."""

from importlib.metadata import version as _version

__version__ = _version("iap")  # single source: pyproject.toml
