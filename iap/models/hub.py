"""Config-only access to a model named by a Hugging Face id or a local folder, before any weight is
loaded: so that a mismatched pair fails before download and precompute, and so that a hub model's
weights are pinned to the revision its fingerprint names."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from iap.errors import IapError


def is_local(source: str) -> bool:
    """A folder path (anything that exists, or does not look like 'org/name')."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


@functools.cache
def revision(source: str) -> str | None:
    """The commit a hub id resolves to now (None for a local folder); every load of it in this process uses it."""
    if is_local(source):
        return None
    try:
        from huggingface_hub import HfApi
        return HfApi().model_info(source).sha
    except Exception as e:  # offline, unknown id, gated: one message, whatever the client raised
        raise IapError(f"could not resolve '{source}' on the Hugging Face hub: {str(e).splitlines()[0]}") from e


def fetch_json(source: str, filename: str) -> dict:
    """One JSON file of a hub model at its pinned revision (downloads that file only)."""
    from huggingface_hub import hf_hub_download
    try:
        return json.loads(Path(hf_hub_download(source, filename, revision=revision(source))).read_text())
    except IapError:
        raise
    except Exception as e:
        raise IapError(f"could not fetch {filename} of '{source}' from the Hugging Face hub: "
                       f"{str(e).splitlines()[0]}") from e


def read_config(source: str, subfolder: str = "") -> dict:
    """config.json of a model (or of one component folder of a pipeline), local or on the hub."""
    return read_json(source, f"{subfolder}/config.json" if subfolder else "config.json")


def read_json(source: str, filename: str) -> dict:
    """One JSON file of a model, local or on the hub."""
    if not is_local(source):
        return fetch_json(source, filename)
    if not Path(source).is_dir():
        raise IapError(f"model folder '{source}' does not exist (give a folder or a hub id like 'org/name')")
    path = Path(source, filename)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise IapError(f"'{source}' has no {filename}: not a model folder") from e
    except (OSError, json.JSONDecodeError) as e:
        raise IapError(f"{path}: cannot read it as JSON ({e})") from e
