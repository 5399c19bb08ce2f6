"""A self-contained evaluation report: report.html (PNGs embedded) plus the PNG files it uses."""

from __future__ import annotations

import base64
import html
import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from iap.storage import filesystem, is_remote, put_tree

STYLE = ("body{font-family:sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left} img.s{width:128px;image-rendering:pixelated}")


def _data_uri(path: Path) -> str:
    return _png_uri(path.read_bytes())


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _read_if_exists(url: str | Path | None) -> bytes | None:
    if not url:
        return None
    try:
        return filesystem(str(url)).cat_file(str(url))
    except FileNotFoundError:
        return None


def _save(image: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


HEADLINE = [  # (label, English-teacher key, trained key, untrained key): shown first when present
    ("colour accuracy (shape and background)", "teacher_en_colour_accuracy", "colour_accuracy",
     "untrained_colour_accuracy"),
    ("shape colour accuracy", "teacher_en_shape_colour_accuracy", "shape_colour_accuracy",
     "untrained_shape_colour_accuracy"),
    ("background colour accuracy", "teacher_en_background_colour_accuracy", "background_colour_accuracy",
     "untrained_background_colour_accuracy"),
    ("shape class accuracy", "teacher_en_shape_class_accuracy", "shape_class_accuracy",
     "untrained_shape_class_accuracy"),
]


def _cell(v) -> str:
    return "" if v is None else f"{v:.1%}" if isinstance(v, float) else html.escape(str(v))


def _headline(metrics: dict) -> str:
    rows = [f"<tr><td>{label}</td>" + "".join(f"<td>{_cell(metrics.get(k))}</td>" for k in keys) + "</tr>"
            for label, *keys in HEADLINE if keys[1] in metrics]
    if not rows:
        return ""
    return ("<h2>Held-out prompts, generated images classified by pixel statistics</h2><table><tr><th></th>"
            "<th>English prompt (base)</th><th>Chinese prompt, trained</th><th>Chinese prompt, untrained</th></tr>"
            + "".join(rows) + "</table>")


def write_report(url: str, title: str, metrics: dict, pairs: list[dict], loss_curve: str | None = None) -> str:
    """pairs: [{caption_zh, caption_en, zh: image, en: image, untrained_zh?: image}] -> URL/report.html (local or
    remote; written in a local folder first, report.html last)."""
    with tempfile.TemporaryDirectory(prefix="iap-report-") as tmp:
        _write_page(Path(tmp), title, metrics, pairs, _read_if_exists(loss_curve))
        if is_remote(url):
            put_tree(Path(tmp), url, last="report.html")
        else:
            Path(url).mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(tmp).iterdir(), key=lambda p: p.name == "report.html"):
                shutil.move(f, Path(url) / f.name)
    return f"{url.rstrip('/')}/report.html"


def _write_page(folder: Path, title: str, metrics: dict, pairs: list[dict], curve_png: bytes | None) -> None:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
    columns = [c for c in ("zh", "untrained_zh", "en") if pairs and c in pairs[0]]
    heads = {"zh": "zh (trained encoder)", "untrained_zh": "zh (untrained encoder)", "en": "en (base)"}
    grid = []
    for i, p in enumerate(pairs):
        cells = "".join(f"<td><img class=s src='{_data_uri(_save(p[c], folder / f'pair{i:02d}_{c}.png'))}'></td>"
                        for c in columns)
        grid.append(f"<tr><td>{html.escape(p['caption_zh'])}<br><small>{html.escape(p['caption_en'])}</small></td>"
                    f"{cells}</tr>")
    curve = f"<h2>Loss curve</h2><img src='{_png_uri(curve_png)}'>" if curve_png else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{_headline(metrics)}"
            f"<h2>Held-out prompts: Chinese vs English, same seed</h2><table><tr><th>prompt</th>"
            + "".join(f"<th>{heads[c]}</th>" for c in columns) + f"</tr>{''.join(grid)}</table>"
            f"<h2>All metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>{curve}"
            "</body></html>")
    (folder / "report.html").write_text(page, encoding="utf-8")
