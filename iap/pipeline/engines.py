"""Where the `iap` stage commands run. `local`: in this process, by the library's stage functions. Any other
engine is a plugin registered under the `iap.engines` entry-point group; the `flows` package registers
`prefect` (the same Prefect flows a deployment runs), so the library itself never imports Prefect.

An engine has one method per stage command, with the same parameters and results in every engine: the same
inputs give the same snapshot, cache, run and checkpoint ids whichever ran them."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol

from iap.cache.info import CacheInfo
from iap.data.snapshot import Snapshot
from iap.errors import IapError
from iap.evaluation.metrics import Metrics
from iap.pipeline.request import PipelineRequest, PipelineResult, StageConfigs

GROUP = "iap.engines"  # the entry-point group plugins register under (a public name: kept)
EVAL_SET = {"val_fraction": 0.0, "test_fraction": 1.0, "dedup_image": False}
# an evaluation manifest is used whole (every row in `test`), and several captions of one image are all kept


class Engine(Protocol):
    def data(self, manifest: str, out: str, configs: StageConfigs, on_progress: Callable | None = None) -> Snapshot: ...
    def precompute(self, snapshot: str, base: str, out: str, configs: StageConfigs, precision: str) -> CacheInfo: ...
    def train(self, request: PipelineRequest, configs: StageConfigs,
              progress: Callable[[str, int, int], None] | None = None) -> PipelineResult: ...
    def evaluate(self, checkpoint: str, snapshot: str | None, base: str, untrained: str | None, split: str,
                 configs: StageConfigs, manifest: str | None = None, out: str | None = None) -> Metrics: ...


class LocalEngine:
    """Every stage in this process through the library's functions, no orchestration."""

    def data(self, manifest: str, out: str, configs: StageConfigs, on_progress: Callable | None = None) -> Snapshot:
        from iap.data.pipeline import run_data
        return run_data(manifest, out, configs.download, configs.filter, configs.columns, on_progress=on_progress,
                        english=configs.english)[1]

    def precompute(self, snapshot: str, base: str, out: str, configs: StageConfigs, precision: str) -> CacheInfo:
        from iap.cache.writer import precompute
        from iap.data.snapshot import open_snapshot
        from iap.models.base import weights_fingerprint
        from iap.models.shared import shared_base
        return precompute(open_snapshot(snapshot), lambda: shared_base(base, precision), weights_fingerprint(base),
                          out, configs.cache)

    def train(self, request: PipelineRequest, configs: StageConfigs,
              progress: Callable[[str, int, int], None] | None = None) -> PipelineResult:
        from iap.pipeline.local import run_pipeline
        return run_pipeline(request, configs, progress=progress)

    def evaluate(self, checkpoint: str, snapshot: str | None, base: str, untrained: str | None, split: str,
                 configs: StageConfigs, manifest: str | None = None, out: str | None = None) -> dict:
        from iap.pipeline.stages import evaluate_stage
        if manifest:
            snapshot = self.data(manifest, f"{out}/eval-data", evaluation_set(configs)).url
            split = "test"
        return evaluate_stage(checkpoint, snapshot, base, untrained, split, configs.evaluate)


def evaluation_set(configs: StageConfigs) -> StageConfigs:
    """An evaluation manifest's data settings: every row in `test`, every caption of an image kept."""
    return configs.model_copy(update={"filter": configs.filter.model_copy(update=EVAL_SET)})


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
