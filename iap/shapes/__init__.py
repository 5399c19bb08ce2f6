"""The shapes world, the demo's data world: coloured shapes on coloured backgrounds with paired
English/Chinese captions. Apart from the core, plugged into evaluation through iap.evaluation.worlds:

  iap.shapes          combos, captions and rendering (this module)
  iap.shapes.synth    a manifest of rendered images and a local HTTP server for img2dataset
  iap.shapes.metrics  what a generated image shows (colours, shape), by pixel statistics
  iap.shapes.world    the evaluation plug: prompts to draw, image scores, their definitions
  iap.shapes.teacher  the shapes teacher: a small English Stable Diffusion trained on CPU
  iap.shapes.lora     a LoRA of the teacher (add-ons keep working with Chinese prompts)

`iap demo` (iap.pipeline.demo) runs the full pipeline on the teacher and this world's synthetic data.

Everything is a pure function of a seed, so demo and tests are reproducible offline.
A *combo* is (size, colour, shape, background); caption templates are paired by index
(the Chinese template i is a translation of the English template i), as in translated data.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

COLORS = {  # English name -> (Chinese name, RGB)
    "red": ("红色", (220, 30, 30)),
    "green": ("绿色", (30, 170, 50)),
    "blue": ("蓝色", (30, 60, 220)),
    "yellow": ("黄色", (240, 220, 30)),
    "purple": ("紫色", (140, 40, 170)),
    "orange": ("橙色", (245, 140, 20)),
    "white": ("白色", (245, 245, 245)),
    "black": ("黑色", (15, 15, 15)),
}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形"}
SIZES = {"big": "大", "small": "小"}

EN_TEMPLATES = [
    "a {size} {color} {shape} on a {bg} background",
    "a photo of a {size} {color} {shape} on a {bg} background",
    "{bg} background with a {size} {color} {shape}",
]
ZH_TEMPLATES = [
    "{bg}背景上的一个{size}{color}{shape}",
    "一张{bg}背景上的{size}{color}{shape}的照片",
    "{bg}背景，有一个{size}{color}{shape}",
]


@dataclass(frozen=True)
class Combo:
    size: str
    color: str
    shape: str
    bg: str

    @property
    def name(self) -> str:
        return f"{self.size}-{self.color}-{self.shape}-on-{self.bg}"


@dataclass(frozen=True)
class Sample:
    combo: Combo
    template: int
    seed: int  # drives the shape's position jitter

    @property
    def caption_en(self) -> str:
        c = self.combo
        return EN_TEMPLATES[self.template].format(size=c.size, color=c.color, shape=c.shape, bg=c.bg)

    @property
    def caption_zh(self) -> str:
        c = self.combo
        return ZH_TEMPLATES[self.template].format(
            size=SIZES[c.size], color=COLORS[c.color][0], shape=SHAPES[c.shape], bg=COLORS[c.bg][0]
        )

    def record(self) -> dict:
        return {"caption_en": self.caption_en, "caption_zh": self.caption_zh, "combo": self.combo.name,
                **asdict(self.combo), "template": self.template, "seed": self.seed}


def all_combos() -> list[Combo]:
    return [Combo(size, color, shape, bg)
            for size in SIZES for color in COLORS for shape in SHAPES for bg in COLORS if bg != color]


def is_held_out(combo: Combo, fraction: float = 0.15) -> bool:
    """Stable combo-level hold-out: held-out combos never appear in training."""
    h = int.from_bytes(hashlib.sha256(combo.name.encode()).digest()[:8], "big")
    return (h % 10_000) < fraction * 10_000


def samples(n: int, seed: int) -> list[Sample]:
    """n samples cycling over all combos and templates in a seeded order."""
    rng = random.Random(seed)
    pairs = [(c, t) for c in all_combos() for t in range(len(EN_TEMPLATES))]
    rng.shuffle(pairs)
    return [Sample(c, t, rng.randrange(2**31)) for c, t in (pairs[i % len(pairs)] for i in range(n))]


def render(sample: Sample, size: int = 64) -> Image.Image:
    """Draw the sample's shape at a jittered position; big shapes span ~60% of the side, small ~30%."""
    c = sample.combo
    rng = random.Random(sample.seed)
    img = Image.new("RGB", (size, size), COLORS[c.bg][1])
    draw = ImageDraw.Draw(img)
    side = size * (0.6 if c.size == "big" else 0.3)
    jitter = (size - side) / 2 * 0.6
    cx = size / 2 + rng.uniform(-jitter, jitter)
    cy = size / 2 + rng.uniform(-jitter, jitter)
    r = side / 2
    fill = COLORS[c.color][1]
    if c.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif c.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif c.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return img


def english_words() -> list[str]:
    """Every word the English templates can produce (for the tiny CLIP tokenizer's vocabulary)."""
    words = {w for t in EN_TEMPLATES for w in t.replace("{", " ").replace("}", " ").split()}
    words -= {"size", "color", "shape", "bg"}
    return sorted(words | set(COLORS) | set(SHAPES) | set(SIZES))


def chinese_characters() -> list[str]:
    """Every character the Chinese templates can produce (for the tiny BERT vocabulary)."""
    text = "".join(ZH_TEMPLATES) + "".join(v[0] for v in COLORS.values())
    text += "".join(SHAPES.values()) + "".join(SIZES.values())
    for key in ("{size}", "{color}", "{shape}", "{bg}"):
        text = text.replace(key, "")
    return sorted(set(text))
