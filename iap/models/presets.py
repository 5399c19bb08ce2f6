"""Named model presets usable wherever a model id or folder is expected.

preset:tiny            random-init base + Chinese BERT, written once, deterministically, under workdir
preset:shapes-teacher  the shapes teacher (a base that can draw the shapes world), committed with the
                       package; as a Chinese encoder it means the tiny preset's BERT (same hidden size)
"""

from __future__ import annotations

from pathlib import Path

from iap.errors import IapError

PRESETS = {"preset:tiny", "preset:shapes-teacher"}
SHAPES_TEACHER = Path(__file__).resolve().parent.parent / "presets" / "shapes-teacher"


def _tiny(workdir: str | Path) -> Path:
    from iap.models.tiny import write_tiny
    folder = Path(workdir) / "models" / "tiny"
    if not (folder / "preset.json").exists():
        write_tiny(folder)
    return folder


def resolve(base: str, zh_encoder: str, workdir: str | Path) -> tuple[str, str]:
    """Replace preset names by folders."""
    unknown = {b for b in (base, zh_encoder) if b.startswith("preset:") and b not in PRESETS}
    if unknown:
        raise IapError(f"unknown preset {', '.join(sorted(unknown))}; known: {', '.join(sorted(PRESETS))}")
    if base == "preset:shapes-teacher":
        base = str(SHAPES_TEACHER)
    elif base == "preset:tiny":
        base = str(_tiny(workdir) / "base")
    if zh_encoder in PRESETS:
        zh_encoder = str(_tiny(workdir) / "zh_encoder")
    return base, zh_encoder
