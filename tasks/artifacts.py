"""UI artifacts: funnel and metric tables, lineage markdown, the loss curve PNG."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from iap.storage import write_atomic


def funnel(rows: list[dict], snapshot_id: str) -> None:
    create_table_artifact(key="iap-funnel", table=rows, description=f"filter funnel of snapshot {snapshot_id}")


def metrics(values: dict, title: str) -> None:
    table = [{"metric": k, "value": round(v, 6) if isinstance(v, float) else v} for k, v in values.items()]
    create_table_artifact(key="iap-metrics", table=table, description=title)


def markdown(key: str, text: str, description: str = "") -> None:
    create_markdown_artifact(key=key, markdown=text, description=description)


def lineage(items: dict) -> None:
    lines = ["# Lineage", "", "| stage | id / URL |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in items.items()]
    markdown("iap-lineage", "\n".join(lines), "every upstream id and URL of this run")


def loss_curve_png(losses: list[tuple[int, float]], url: str) -> str:
    """The training loss curve as a PNG at `url` (local or remote)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    if losses:
        steps, values = zip(*losses, strict=True)
        ax.plot(steps, values)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomic(url, png.getvalue())
    return url
