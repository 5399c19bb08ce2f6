"""A data world plugs into evaluation. The core evaluation knows what a held-out pair is, not what its images
should show: a world recognises its rows, picks the prompts worth drawing (e.g. one per combination), scores
generated images against their prompts, and defines those metrics for the report. A registry gate may then
use one of its metrics (GateConfig.semantic_metric). The shapes world of the demo is `iap.shapes.world`."""

from __future__ import annotations

import importlib
from typing import Protocol

from PIL import Image

WORLDS = ("iap.shapes.world:WORLD",)  # module:attribute, imported when rows are scored


class World(Protocol):
    definitions: dict[str, str]  # metric name -> one line, for the report

    def owns(self, rows: list[dict]) -> bool: ...

    def prompts(self, rows: list[dict]) -> list[dict]: ...

    def score(self, images: list[Image.Image], rows: list[dict]) -> dict[str, float]: ...


def _load(path: str) -> World:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def world_of(rows: list[dict]) -> World | None:
    """The world whose rows these are, or None: then every row is a prompt and no image is scored."""
    return next((w for w in map(_load, WORLDS) if rows and w.owns(rows)), None)


def definitions() -> dict[str, str]:
    return {k: v for path in WORLDS for k, v in _load(path).definitions.items()}
