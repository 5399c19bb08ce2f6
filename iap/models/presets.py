"""Named model presets usable wherever a model id or folder is expected ("preset:tiny")."""

from __future__ import annotations

from pathlib import Path

from iap.errors import IapError

PRESETS = {"preset:tiny"}


def resolve(base: str, zh_encoder: str, workdir: str | Path) -> tuple[str, str]:
    """Replace preset names by folders (the tiny preset is written once, deterministically, under workdir)."""
    if base not in PRESETS and zh_encoder not in PRESETS:
        return base, zh_encoder
    unknown = {b for b in (base, zh_encoder) if b.startswith("preset:") and b not in PRESETS}
    if unknown:
        raise IapError(f"unknown preset {', '.join(unknown)}; known: {', '.join(sorted(PRESETS))}")
    from iap.models.tiny import write_tiny
    folder = Path(workdir) / "models" / "tiny"
    if not (folder / "preset.json").exists():
        write_tiny(folder)
    return (str(folder / "base") if base == "preset:tiny" else base,
            str(folder / "zh_encoder") if zh_encoder == "preset:tiny" else zh_encoder)
