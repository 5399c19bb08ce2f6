"""iap: transfer an English Stable Diffusion model to Chinese prompts with IAP (images as pivots)."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("iap")  # single source: pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
