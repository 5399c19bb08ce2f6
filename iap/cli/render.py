"""How commands show results: progress bars, where outputs went, the data funnel and its rejects."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

from iap.cli.common import console
from iap.data.snapshot import Snapshot
from iap.pipeline.request import PipelineResult


@contextmanager
def stage_progress():
    """A progress bar per stage (precompute shards, training steps, evaluation image sets) on stderr, gone when
    the command ends; the local engine reports into it (under Prefect, the run page shows progress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)
        yield update


def finish(result: PipelineResult, engine: str) -> None:
    """Where every output went. Under Prefect the run's last log lines (also shown by --watch) said it."""
    if engine == "local":
        from iap.pipeline.request import describe
        console.print(describe(result), highlight=False, soft_wrap=True)
        return
    console.print(f"checkpoint {result.checkpoint_id}: {result.status} ({result.reason}); flow run "
                  f"{result.flow_run_id}" + (f"\n{result.hub}" if result.hub else ""),
                  highlight=False, soft_wrap=True)


def print_data_plan(manifest, plan) -> None:
    """`iap data --dry-run`: the manifest's funnel, then what the download would fetch."""
    from rich.table import Table
    from rich.text import Text

    from iap.data.pipeline import manifest_funnel
    from iap.data.snapshot import funnel_table
    table = Table(title=f"manifest {manifest.fingerprint} (dry run)")
    for col in ("stage", "rule", "removed", "remaining", "example"):
        table.add_column(col, justify="right" if col in ("removed", "remaining") else "left")
    for f in funnel_table(manifest_funnel(manifest)):
        table.add_row(f["stage"], f["rule"], str(f["removed"]), str(f["remaining"]), Text(f["examples"]))
    console.print(table)
    pending = manifest.english.get("translate", {}).get("to_translate")
    console.print(f"download {plan.download_id}: {plan.rows:,} rows; {plan.already_downloaded:,} already downloaded "
                  f"under OUT, {plan.to_fetch:,} to fetch, about {plan.projected_bytes / 1e9:,.1f} GB of images "
                  "(from the image size and format)" + (f"\n{pending:,} rows would be machine-translated first"
                                                        if pending else "") + f"\n{plan.raw_url}\nnothing was written",
                  highlight=False, soft_wrap=True)


def print_funnel(snapshot: Snapshot) -> None:
    """The snapshot's funnel as a table, then its row counts and URL."""
    from rich.table import Table
    from rich.text import Text

    from iap.data.snapshot import funnel_table
    table = Table(title=f"snapshot {snapshot.id}" + (" (cached)" if snapshot.cached else ""))
    for col in ("stage", "rule", "removed", "remaining", "examples removed"):
        table.add_column(col, justify="right" if col in ("removed", "remaining") else "left")
    for f in funnel_table(snapshot.funnel):
        table.add_row(f["stage"], f["rule"], str(f["removed"]), str(f["remaining"]), Text(f["examples"]))
    console.print(table)
    console.print(f"rows: {snapshot.rows}\nsnapshot: {snapshot.url}")


def print_rejects(snapshot: Snapshot, per_rule: int) -> None:
    """Up to per_rule removed rows of every filter rule: the caption as it came and as the rules read it."""
    if not per_rule:
        return
    from rich.table import Table
    from rich.text import Text

    from iap.data.snapshot import printable, read_rejects
    table = Table(title=f"removed rows (up to {per_rule} per rule)")
    for col in ("rule", "key", "caption_zh (as it came)", "caption_zh (normalised)", "caption_en (as it came)"):
        table.add_column(col)
    for r in read_rejects(snapshot, per_rule):
        table.add_row(*(Text(printable(r[c], 40)) for c in ("removed_by", "key", "caption_zh_raw", "caption_zh",
                                                             "caption_en_raw")))
    console.print(table)


