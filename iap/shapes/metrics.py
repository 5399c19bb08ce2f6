"""What a generated shapes-world image shows, by pixel statistics (no learned model): the dominant colour
of the border (background) and of the centre region that differs from it (the shape), matched to the
palette by nearest RGB; the shape class from the mask of that region (the shape drawn into the mask's
bounding box that overlaps it best). Accuracy against the prompt's colours and shape."""

from __future__ import annotations

import numpy as np
from PIL import Image

from iap.shapes import COLORS


def _nearest(rgb: np.ndarray) -> str:
    names = list(COLORS)
    palette = np.array([COLORS[n][1] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


def _background(a: np.ndarray) -> np.ndarray:
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)


def shape_colours(image: Image.Image) -> tuple[str, str]:
    """(shape colour, background colour) of a shapes-world image by pixel statistics."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = _background(a)
    h, w = a.shape[:2]
    centre = a[h // 6: h - h // 6, w // 6: w - w // 6].reshape(-1, 3)
    differs = np.abs(centre - background).sum(1) > 60
    shape = np.median(centre[differs], axis=0) if differs.sum() >= 4 else background
    return _nearest(shape), _nearest(background)


def _outline(shape: str, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """The mask of `shape` drawn as the shapes world draws it, filling box = (left, top, right, bottom)."""
    from PIL import ImageDraw
    img = Image.new("1", size, 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    cx, cy = (left + right) / 2, (top + bottom) / 2
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=1)
    else:
        draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=1)
    return np.asarray(img, dtype=bool)


def shape_class(image: Image.Image) -> str:
    """circle / square / triangle / diamond (or none): the mask of pixels that differ from the background
    is compared with each shape drawn into the mask's bounding box; the best overlap (IoU) wins."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.abs(a - _background(a)).sum(2) > 60
    mask[[0, -1]] = False
    mask[:, [0, -1]] = False
    rows, cols = np.nonzero(mask)
    if len(rows) < 4:
        return "none"
    box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    size = (mask.shape[1], mask.shape[0])
    iou = {s: (mask & o).sum() / max((mask | o).sum(), 1)
           for s in ("circle", "square", "triangle", "diamond") for o in [_outline(s, size, box)]}
    return max(iou, key=iou.get)


def shapes_accuracy(images: list[Image.Image], colors: list[str], backgrounds: list[str],
                    classes: list[str] | None = None) -> dict[str, float]:
    found = [shape_colours(i) for i in images]
    shape_ok = [f[0] == c for f, c in zip(found, colors, strict=True)]
    bg_ok = [f[1] == b for f, b in zip(found, backgrounds, strict=True)]
    out = {"shape_colour_accuracy": float(np.mean(shape_ok)), "background_colour_accuracy": float(np.mean(bg_ok)),
           "colour_accuracy": float(np.mean([s and b for s, b in zip(shape_ok, bg_ok, strict=True)]))}
    if classes is not None:
        out["shape_class_accuracy"] = float(np.mean([shape_class(i) == c
                                                     for i, c in zip(images, classes, strict=True)]))
    return out
