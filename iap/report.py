"""A self-contained evaluation report: report.html (PNGs embedded) plus the PNG files it uses."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

STYLE = ("body{font-family:sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left} img.s{width:128px;image-rendering:pixelated}")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _save(image: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def write_report(folder: str | Path, title: str, metrics: dict, pairs: list[dict],
                 loss_curve: str | Path | None = None) -> Path:
    """pairs: [{caption_zh, caption_en, zh: PIL image, en: PIL image}] -> folder/report.html."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
    grid = []
    for i, p in enumerate(pairs):
        zh, en = _save(p["zh"], folder / f"pair{i:02d}_zh.png"), _save(p["en"], folder / f"pair{i:02d}_en.png")
        grid.append(f"<tr><td>{html.escape(p['caption_zh'])}<br><small>{html.escape(p['caption_en'])}</small></td>"
                    f"<td><img class=s src='{_data_uri(zh)}'></td><td><img class=s src='{_data_uri(en)}'></td></tr>")
    curve = f"<h2>Loss curve</h2><img src='{_data_uri(Path(loss_curve))}'>" if loss_curve and Path(loss_curve).exists() else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><h2>Metrics</h2>"
            f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>{curve}"
            f"<h2>Held-out prompts: Chinese vs English, same seed</h2>"
            f"<table><tr><th>prompt</th><th>zh (trained encoder)</th><th>en (base)</th></tr>{''.join(grid)}</table>"
            "</body></html>")
    out = folder / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
