"""Where the `iap` stage commands run. `local`: in this process, by the library's stage functions. Any other
engine is a plugin registered under the `iap.engines` entry-point group; the `flows` package registers
`prefect` (the same Prefect flows a deployment runs), so the library itself never imports Prefect.

An engine has one method per stage command, with the same parameters and results in every engine: the same
inputs give the same snapshot, cache, run and checkpoint ids whichever ran them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import entry_points
from typing import Protocol

from iap.errors import IapError

GROUP = "iap.engines"  # the entry-point group plugins register under (a public name: kept)
EVAL_SET = {"val_fraction": 0.0, "test_fraction": 1.0, "dedup_image": False}
# an evaluation manifest is used whole (every row in `test`), and several captions of one image are all kept


class Engine(Protocol):
    def data(self, manifest: str, out: str, configs: dict, on_progress: Callable | None = None) -> dict: ...
    def precompute(self, snapshot: str, base: str, out: str, configs: dict, precision: str) -> dict: ...
    def train(self, **pipeline) -> dict: ...
    def evaluate(self, checkpoint: str, snapshot: str | None, base: str, untrained: str | None, split: str,
                 configs: dict, manifest: str | None = None, out: str | None = None) -> dict: ...


class LocalEngine:
    """Every stage in this process through the library's functions, no orchestration."""

    def data(self, manifest: str, out: str, configs: dict, on_progress: Callable | None = None) -> dict:
        from iap.data.pipeline import run_data
        return asdict(run_data(manifest, out, configs["download"], configs["filter"], configs["columns"],
                               on_progress=on_progress, english=configs["english"])[1])

    def precompute(self, snapshot: str, base: str, out: str, configs: dict, precision: str) -> dict:
        from iap.cache.writer import precompute
        from iap.data.snapshot import open_snapshot
        from iap.models.base import weights_fingerprint
        from iap.models.shared import shared_base
        return asdict(precompute(open_snapshot(snapshot), lambda: shared_base(base, precision),
                                 weights_fingerprint(base), out, configs["cache"]))

    def train(self, **pipeline) -> dict:
        from iap.pipeline.local import run_pipeline
        return run_pipeline(**pipeline)

    def evaluate(self, checkpoint: str, snapshot: str | None, base: str, untrained: str | None, split: str,
                 configs: dict, manifest: str | None = None, out: str | None = None) -> dict:
        from iap.pipeline.stages import evaluate_stage
        if manifest:
            snapshot = self.data(manifest, f"{out}/eval-data", configs | {
                "filter": configs["filter"].model_copy(update=EVAL_SET)})["url"]
            split = "test"
        return evaluate_stage(checkpoint, snapshot, base, untrained, split, configs["evaluate"])


def names() -> list[str]:
    return ["local", *sorted(ep.name for ep in entry_points(group=GROUP))]


def load(name: str) -> Engine:
    """The engine by name; an unknown or uninstalled one is one message listing those there are."""
    if name == "local":
        return LocalEngine()
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise IapError(f"engine '{name}' is not installed; use one of: {', '.join(names())}")
    return found[0].load()()
