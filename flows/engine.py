"""The `prefect` engine of the `iap` command (entry point `iap.engines: prefect`): each stage command runs
the Prefect flow a deployment runs (an ephemeral API when no server is configured), so a command and a
deployment behave the same."""

from __future__ import annotations

import logging
from collections.abc import Callable

from iap.cache.info import CacheInfo
from iap.data.snapshot import Snapshot
from iap.errors import IapError
from iap.pipeline.request import PipelineRequest, PipelineResult, StageConfigs


class PrefectEngine:
    def __init__(self) -> None:
        _user_errors_without_traceback()

    def data(self, manifest: str, out: str, configs: StageConfigs, on_progress: Callable | None = None) -> Snapshot:
        from flows.data import iap_data
        return iap_data(manifest, out, configs.download, configs.filter, configs.columns, configs.english)

    def precompute(self, snapshot: str, base: str, out: str, configs: StageConfigs, precision: str) -> CacheInfo:
        from flows.precompute import iap_precompute
        return iap_precompute(snapshot, base, out, configs.cache, precision)

    def train(self, request: PipelineRequest, configs: StageConfigs,
              progress: Callable[[str, int, int], None] | None = None) -> PipelineResult:
        """`progress` is not drawn here: the flow logs through Prefect, and the UI shows its progress."""
        from flows.train import iap_train
        return iap_train(**request.model_dump(), **dict(configs))

    def evaluate(self, checkpoint: str, snapshot: str | None, base: str, untrained: str | None, split: str,
                 configs: StageConfigs, manifest: str | None = None, out: str | None = None) -> dict:
        from flows.evaluate import iap_evaluate
        return iap_evaluate(checkpoint, snapshot, base, untrained, split, configs.evaluate, manifest=manifest,
                            out=out, download=configs.download, filter=configs.filter, columns=configs.columns)


def _drop_user_error_traceback(record: logging.LogRecord) -> bool:
    """A user error (IapError) ends as one line from iap.cli.main.run; Prefect's console keeps its state lines but
    not a traceback for it (its API log, what the UI shows, keeps everything)."""
    if record.exc_info and isinstance(record.exc_info[1], IapError):
        record.exc_info, record.exc_text = None, None
    return True


def _user_errors_without_traceback() -> None:
    from prefect.logging.configuration import setup_logging
    setup_logging()
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console, not the API
            handler.addFilter(_drop_user_error_traceback)
