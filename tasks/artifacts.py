"""UI artifacts: funnel and metric tables, the loss curve (rendered inline), the run's lineage."""

from __future__ import annotations

import base64

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.utilities.urls import url_for

from iap.report import add_lineage, plot_losses
from iap.storage import write_atomic


def funnel(rows: list[dict], snapshot_id: str) -> None:
    create_table_artifact(key="iap-funnel", table=rows, description=f"filter funnel of snapshot {snapshot_id}")


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


def loss_curve(losses: list[tuple[int, float]], url: str, summary: str) -> str:
    """The training loss curve as a PNG at `url` (local or remote) and as an artifact the UI renders (the
    image inline as a data URI: the UI cannot open a file:// or s3:// link)."""
    png = plot_losses(losses)
    write_atomic(url, png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    markdown("iap-loss-curve", f"![training loss curve]({uri})\n\n{summary}\n\nPNG: `{url}`", "training loss curve")
    return url


def publish_run(result: dict, lineage_ids: dict) -> dict:
    """On the iap-train run itself (the run a user opens): the funnel, the held-out metrics and the lineage,
    each stage linked to the flow run that produced it. Returns the same for summary.json."""
    from iap.data.snapshot import open_snapshot
    snap = open_snapshot(result["snapshot"])
    runs, metrics_ = result["flow_runs"], result["metrics"]
    download_id = snap.inputs.get("manifest", {}).get("download_id")
    funnel(snap.funnel, snap.id)
    metrics({k: v for k, v in metrics_.items() if isinstance(v, int | float)}, f"held-out metrics of {result['checkpoint_id']}")
    decision = f"{result['status']} ({result['reason']})"
    stages = [("manifest", result["manifest"] or "-", runs["iap-data"]),
              ("download", download_id or "-", runs["iap-data"]),
              ("snapshot", f"{snap.id} {snap.url}", runs["iap-data"]),
              ("cache", f"{lineage_ids['cache_key']} {result['cache']}", runs["iap-precompute"]),
              ("run", result["run_dir"], runs["iap-train"]),
              ("checkpoint", f"{result['checkpoint_id']} {result['checkpoint']}", runs["iap-train"]),
              ("evaluation", metrics_.get("report", "-"), runs["iap-evaluate"]),
              ("pipeline", result["pipeline_dir"], runs["iap-train"]),
              ("registry entry", f"{result['registry']} ({decision})", runs["iap-train"])]
    lineage(stages, decision)
    get_run_logger().info(f"checkpoint {result['checkpoint_id']}: {decision}\n" + "\n".join(
        f"  {what:15} {value}" for what, value, _ in stages))  # the run's last log line: in `--watch` too
    table = [{"stage": what, "value": value, "flow_run_id": run} for what, value, run in stages]
    if metrics_.get("report"):
        add_lineage(metrics_["report"], table, decision, snap.funnel, result["train_config"])
    return {"funnel": snap.funnel, "download_id": download_id, "snapshot_id": snap.id, "cache_key": lineage_ids["cache_key"],
            "report": metrics_.get("report"),
            "lineage": table}
