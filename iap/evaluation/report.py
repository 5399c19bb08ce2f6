"""A self-contained evaluation report: report.html (images embedded) plus the full-size PNGs it shows.

One column order everywhere: English prompt (base) | Chinese prompt, trained | Chinese prompt, untrained.
Every metric carries its one-line definition; the lineage section is filled in once the run is registered.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from iap.data.snapshot import funnel_table
from iap.evaluation.metrics import Metrics
from iap.system.storage import filesystem, is_remote, put_tree, write_atomic

STYLE = ("body{font-family:'Noto Sans CJK SC','Noto Sans SC',sans-serif;margin:2em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "td.n{text-align:right;font-variant-numeric:tabular-nums} img.s{width:96px;image-rendering:pixelated}"
         "small{color:#666} .grid td{vertical-align:top}")
COLUMNS = [("english", "en", "English prompt (base)"), ("trained", "zh", "Chinese prompt, trained"),
           ("untrained", "untrained_zh", "Chinese prompt, untrained")]  # Metrics section, image key, label
LINEAGE_MARK = "<!--iap-lineage-->"

DEFINITIONS = {  # metric name (as in each Metrics section) -> one line
    "heldout_loss": "IAP (pivot) loss on held-out pairs with fixed (t, noise) draws; lower is better",
    "mismatched_caption_loss": "the loss when the Chinese states are another sample's English states: the level of "
                               "two different captions",
    "retrieval_top1": "share of held-out Chinese captions whose English pair ranks first by attention-feature distance",
    "retrieval_top5": "the same, paired English caption within the first five",
    "heldout_pairs": "held-out pairs the losses and retrieval use",
    "generated_prompts": "held-out prompts drawn (the data world's choice, e.g. one per combination)",
    "consistency_pixel_l1": "mean absolute pixel difference (0..1) to the English prompt's image, same seed; lower is "
                            "closer",
    "kid_zh_vs_en": "KID (unbiased at small N) between the Chinese-prompt and English-prompt image sets",
    "fid_zh_vs_en": "FID between the two image sets (only above as many images as feature dimensions)",
    "clip_score": "CLIP score of the Chinese-prompt images against the English captions",
}  # and each data world's own (iap.evaluation.worlds.definitions)


def definitions() -> dict[str, str]:
    """The core metrics' definitions and every data world's."""
    from iap.evaluation.worlds import definitions as world_definitions
    return DEFINITIONS | world_definitions()


def plot_losses(losses: list, heldout: list | None = None, level: float | None = None) -> bytes:
    """PNG: the training loss per logged step; held-out loss points (step, loss) and the mismatched-caption
    level when given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if losses:
        ax.plot(*zip(*losses, strict=True), label="training loss")
    if heldout:
        ax.plot(*zip(*heldout, strict=True), "o--", label="held-out loss")
    if level:
        ax.axhline(level, color="grey", linestyle=":", label="mismatched-caption level")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("IAP loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()


def write_report(url: str, title: str, metrics: Metrics, pairs: list[dict], losses: list | None = None) -> str:
    """pairs: [{caption_zh, caption_en, en: image, zh: image, untrained_zh?: image}] -> URL/report.html (local
    or remote; written in a local folder first, report.html last). `losses`: the run's (step, loss) history."""
    with tempfile.TemporaryDirectory(prefix="iap-report-") as tmp:
        _write_page(Path(tmp), title, metrics, pairs, losses or [])
        if is_remote(url):
            put_tree(Path(tmp), url, last="report.html")
        else:
            Path(url).mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(tmp).iterdir(), key=lambda p: p.name == "report.html"):
                shutil.move(f, Path(url) / f.name)
    return f"{url.rstrip('/')}/report.html"


def add_lineage(report_url: str, stages: list[dict], decision: str, funnel: list[dict], config: dict) -> None:
    """Fill the report's lineage section: manifest -> ... -> registry decision, the data funnel, the config."""
    fs = filesystem(report_url)
    page = fs.cat_file(report_url).decode()
    rows = "".join(f"<tr><td>{html.escape(s['stage'])}</td><td><code>{html.escape(str(s['value']))}</code></td>"
                   f"<td><small>{html.escape(s.get('flow_run_id') or '')}</small></td></tr>" for s in stages)
    steps = "".join(f"<tr><td>{html.escape(f['stage'])}</td><td>{html.escape(f['rule'])}</td>"
                    f"<td class=n>{f['removed']}</td><td class=n>{f['remaining']}</td>"
                    f"<td><small>{html.escape(f['examples'])}</small></td></tr>" for f in funnel_table(funnel))
    section = (f"<h2>Lineage</h2><p>Registry decision: <b>{html.escape(decision)}</b></p><table><tr><th>stage</th>"
               f"<th>id / URL</th><th>flow run</th></tr>{rows}</table><h3>Data funnel</h3><table><tr><th>stage</th>"
               f"<th>rule</th><th>removed</th><th>remaining</th><th>examples removed</th></tr>{steps}</table><h3>Training config</h3>"
               f"<pre>{html.escape(json.dumps(config, indent=1))}</pre>")
    write_atomic(report_url, page.replace(LINEAGE_MARK, section).encode())


def _thumbnail_uri(image: Image.Image, side: int = 256) -> str:
    """An inline thumbnail: small images as PNG, larger ones scaled to `side` as JPEG (a page of 64 prompts at
    512 px stays a few MB)."""
    buf = io.BytesIO()
    if max(image.size) <= side:
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    small = image.copy()
    small.thumbnail((side, side))
    small.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(name: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and (name.endswith("accuracy") or name.startswith("retrieval_")):
        return f"{v:.1%}"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _metrics_table(metrics: Metrics) -> str:
    heads = "".join(f"<th>{label}</th>" for _, _, label in COLUMNS)
    rows, known = [], definitions()
    scored = [(name, [getattr(metrics, section).get(name) for section, _, _ in COLUMNS]) for name in metrics.names()]
    single = [(name, [None, getattr(metrics, name), None]) for name in
              ("mismatched_caption_loss", "heldout_pairs", "generated_prompts") if getattr(metrics, name)]
    for name, values in scored + single:
        cells = "".join(f"<td class=n>{_cell(name, v)}</td>" for v in values)
        rows.append(f"<tr><td><code>{name}</code><br><small>{html.escape(known.get(name, ''))}</small></td>"
                    f"{cells}</tr>")
    return f"<table><tr><th>metric</th>{heads}</tr>{''.join(rows)}</table>"


def _grid(folder: Path, pairs: list[dict]) -> str:
    columns = [(key, label) for _, key, label in COLUMNS if pairs and key in pairs[0]]
    rows = []
    for i, p in enumerate(pairs):
        cells = ""
        for key, _ in columns:
            p[key].save(folder / f"prompt{i:03d}_{key}.png")
            cells += f"<td><img class=s src='{_thumbnail_uri(p[key])}'></td>"
        rows.append(f"<tr><td>{i + 1}. {html.escape(p['caption_zh'])}<br><small>{html.escape(p['caption_en'])}"
                    f"</small></td>{cells}</tr>")
    heads = "".join(f"<th>{label}</th>" for _, label in columns)
    return (f"<h2>All {len(pairs)} held-out prompts, same seed per row</h2><table class=grid><tr><th>prompt</th>"
            f"{heads}</tr>{''.join(rows)}</table>")


def _write_page(folder: Path, title: str, metrics: Metrics, pairs: list[dict], losses: list) -> None:
    heldout = [(0, metrics.untrained["heldout_loss"])] if "heldout_loss" in metrics.untrained else []
    if losses and "heldout_loss" in metrics.trained:
        heldout.append((losses[-1][0], metrics.trained["heldout_loss"]))
    curve = ""
    if losses:
        png = plot_losses(losses, heldout, metrics.mismatched_caption_loss)
        (folder / "loss_curve.png").write_bytes(png)
        curve = ("<h2>Loss curves</h2><img src='data:image/png;base64," + base64.b64encode(png).decode() + "'>"
                 "<p><small>held-out loss: the untrained encoder (step 0) and the evaluated checkpoint</small></p>")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p><small>evaluated {when}"
            f"</small></p><h2>Metrics</h2>{_metrics_table(metrics)}{curve}{_grid(folder, pairs) if pairs else ''}"
            f"{LINEAGE_MARK}</body></html>")
    (folder / "report.html").write_text(page, encoding="utf-8")
