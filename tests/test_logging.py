"""The library logs through logging.getLogger("iap...") (issue 27, finding 8): a user sets its level, the CLI
prints it, and inside a Prefect run its records reach the run's logs in the API."""

from __future__ import annotations

import logging

from iap.config import TrainConfig


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.name}: {record.getMessage()}")


def test_training_logs_to_the_iap_logger_and_its_level_silences_it(base, encoder, small_source, tmp_path):
    from iap.objective import Teacher, make_objective
    from iap.training.loop import train
    records, library = Records(), logging.getLogger("iap")
    library.addHandler(records)
    before = library.level
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=4, log_every=2, warmup_steps=1, empty_prompt_fraction=0)
    try:
        library.setLevel(logging.INFO)
        train(cfg, encoder, make_objective("pivot", Teacher(base)), small_source, tmp_path / "a")
        assert any(line.startswith("iap.training.loop: step 2/4 loss") for line in records.lines), records.lines
        records.lines.clear()
        library.setLevel(logging.WARNING)
        train(cfg.model_copy(update={"steps": 6}), encoder, make_objective("pivot", Teacher(base)), small_source,
              tmp_path / "a")
        assert records.lines == []
    finally:
        library.removeHandler(records)
        library.setLevel(before)


def test_inside_a_flow_run_library_records_go_to_the_api_handler():
    from prefect.logging.handlers import APILogHandler

    import flows  # noqa: F401 - wires the library's logger into Prefect
    handlers = [h for h in logging.getLogger("iap").handlers if isinstance(h, APILogHandler)]
    assert len(handlers) == 1 and logging.getLogger("iap").getEffectiveLevel() <= logging.INFO
    outside = logging.LogRecord("iap.training.loop", logging.INFO, __file__, 1, "step 1/1", None, None)
    assert not handlers[0].filter(outside)  # outside a run: not sent (and no warning per record)


def test_the_local_pipeline_reports_progress_of_each_long_stage(grouped_snapshot_small, tiny_dir, tmp_path):
    """Issue 27, finding 8: the local engine showed progress only for downloads."""
    from iap.cache.info import CacheConfig
    from iap.evaluation.config import EvalConfig
    from iap.pipeline.local import run_pipeline
    from iap.pipeline.request import PipelineRequest, StageConfigs
    seen: dict[str, list[tuple[int, int]]] = {}
    run_pipeline(PipelineRequest(out=str(tmp_path / "out"), base=str(tiny_dir / "base"),
                                 zh_encoder=str(tiny_dir / "zh_encoder"), snapshot=grouped_snapshot_small.url),
                 StageConfigs(cache=CacheConfig(draws=1),
                              train=TrainConfig(steps=4, batch_size=8, checkpoint_every=4, log_every=2, warmup_steps=1),
                              evaluate=EvalConfig(samples=2, steps=2, pairs=8)), log=lambda _: None,
                 progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)))
    assert seen["train"] == [(2, 4), (4, 4)]
    shards = seen["precompute"][-1][1]
    assert seen["precompute"] == [(i, shards) for i in range(1, shards + 1)]
    assert seen["evaluate"] == [(1, 3), (2, 3), (3, 3)]  # English, trained, untrained image sets
