"""Named model presets usable wherever a model id or folder is expected.

preset:tiny            random-init SD-1.x-shaped base + Chinese BERT, written once, deterministically, under
                       workdir
preset:tiny-sd2        the same, SD-2.x-shaped (v-prediction; the Chinese BERT narrower than the
                       cross-attention, so it trains through a learned projection)
preset:shapes-teacher  the shapes teacher (a base that can draw the shapes world), committed with the
                       package; as a Chinese encoder it means the tiny preset's BERT (same hidden size)
"""

from __future__ import annotations

from pathlib import Path

from iap.errors import IapError

PRESETS = {"preset:tiny", "preset:tiny-sd2", "preset:shapes-teacher"}
SHAPES_TEACHER = Path(__file__).resolve().parent.parent / "presets" / "shapes-teacher"
SHAPES_LORA = SHAPES_TEACHER.parent / "shapes-lora"  # a LoRA of the teacher (iap.shapes.lora); not a base


def _tiny(workdir: str | Path, name: str = "tiny") -> Path:
    from iap.models.tiny import TINY_PRESETS, write_tiny
    folder = Path(workdir) / "models" / name
    if not (folder / "preset.json").exists():
        write_tiny(folder, TINY_PRESETS[name], name)
    return folder


def resolve(base: str, zh_encoder: str, workdir: str | Path) -> tuple[str, str]:
    """Replace preset names by folders."""
    unknown = {b for b in (base, zh_encoder) if b.startswith("preset:") and b not in PRESETS}
    if unknown:
        raise IapError(f"unknown preset {', '.join(sorted(unknown))}; known: {', '.join(sorted(PRESETS))}")
    if base == "preset:shapes-teacher":
        base = str(SHAPES_TEACHER)
    elif base in PRESETS:
        base = str(_tiny(workdir, base.removeprefix("preset:")) / "base")
    if zh_encoder in PRESETS:  # the shapes teacher's Chinese encoder is the tiny preset's BERT
        name = "tiny-sd2" if zh_encoder == "preset:tiny-sd2" else "tiny"
        zh_encoder = str(_tiny(workdir, name) / "zh_encoder")
    return base, zh_encoder
