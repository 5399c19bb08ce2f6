"""Read a snapshot shard's rows (key, captions, decoded image) from local disk or s3://."""

from __future__ import annotations

import io

import fsspec
import pyarrow.parquet as pq
from PIL import Image

from iap.errors import IapError

COLUMNS = ["key", "caption_zh", "caption_en", "image"]


def read_shard(url: str, columns: list[str] | None = COLUMNS) -> list[dict]:
    """Rows of one snapshot shard (columns=None: all of them, extra columns included)."""
    fs, _, (path,) = fsspec.get_fs_token_paths(url)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns).to_pylist()
    except (OSError, ValueError) as e:
        raise IapError(f"snapshot shard {url}: cannot read it ({e})") from e


def decode(image_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes)).convert("RGB")
