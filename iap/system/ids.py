"""Content ids: the 16 hex characters (64 bits of SHA-256) that name snapshots, caches, runs and locks."""

from __future__ import annotations

import hashlib


def content_id(text: str) -> str:
    """The id of this text (a canonical description of what the named thing is made from)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
