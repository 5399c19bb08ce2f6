"""UI artifacts: funnel and metric tables, the loss curve (rendered inline), the run's lineage."""

from __future__ import annotations

import base64

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.utilities.urls import url_for

from iap.data.snapshot import funnel_table
from iap.pipeline.request import PipelineResult, describe
from iap.system.storage import filesystem


def funnel(rows: list[dict], snapshot_id: str) -> None:
    create_table_artifact(key="iap-funnel", table=funnel_table(rows),
                          description=f"filter funnel of snapshot {snapshot_id} (examples: the first rows removed)")


def metrics(values: dict, title: str) -> None:
    table = [{"metric": k, "value": round(v, 6) if isinstance(v, float) else v} for k, v in values.items()]
    create_table_artifact(key="iap-metrics", table=table, description=title)


def markdown(key: str, text: str, description: str = "") -> None:
    create_markdown_artifact(key=key, markdown=text, description=description)


def run_link(flow_run_id: str | None) -> str:
    """A markdown link to a flow run in the UI (its id alone where no UI URL is configured)."""
    if not flow_run_id:
        return ""
    url = url_for("flow-run", obj_id=flow_run_id)
    return f"[{flow_run_id[:8]}]({url})" if url else f"`{flow_run_id}`"


def lineage(stages: list[tuple[str, str, str | None]], decision: str) -> None:
    """stages: (what, id or URL, producing flow run id), manifest first, registry entry last."""
    lines = ["# Lineage", "", f"**Registry decision:** {decision}", "", "| stage | id / URL | produced by |",
             "|---|---|---|"] + [f"| {what} | `{value}` | {run_link(run)} |" for what, value, run in stages]
    markdown("iap-lineage", "\n".join(lines), "every stage's output of this run and the flow run that made it")


def loss_curve(url: str, summary: str) -> None:
    """The training loss curve PNG at `url` as an artifact the UI renders (inline as a data URI: the UI cannot
    open a file:// or s3:// link)."""
    uri = "data:image/png;base64," + base64.b64encode(filesystem(url).cat_file(url)).decode()
    markdown("iap-loss-curve", f"![training loss curve]({uri})\n\n{summary}\n\nPNG: `{url}`", "training loss curve")


def publish_run(result: PipelineResult) -> None:
    """On the iap-train run itself (the run a user opens): the funnel, the held-out metrics and the lineage,
    each stage linked to the flow run that produced it; the same as the run's last log lines (shown by
    `--watch`)."""
    funnel(result.funnel, result.snapshot_id)
    metrics({k: v for k, v in result.metrics.flat().items() if isinstance(v, int | float)},
            f"held-out metrics of {result.checkpoint_id}")
    lineage([(s["stage"], s["value"], s["flow_run_id"]) for s in result.lineage], f"{result.status} ({result.reason})")
    get_run_logger().info(describe(result))
