"""Named model presets usable wherever a model id or folder is expected.

preset:tiny            random-init SD-1.x-shaped base + Chinese BERT, written once, deterministically, under
                       workdir
preset:tiny-sd2        the same, SD-2.x-shaped (v-prediction; the Chinese BERT narrower than the
                       cross-attention, so it trains through a learned projection)
preset:tiny-sdxl       the same, SDXL-shaped (two English towers, pooled embedding and time ids; the Chinese
                       side is those towers with the BERT's vocabulary)
preset:shapes-teacher  the shapes teacher (a base that can draw the shapes world), committed with the
                       package; as a Chinese encoder it means the tiny preset's BERT (same hidden size)
preset:shapes-teacher-xl  its SDXL-architecture twin (two text towers, pooled embedding, time ids), committed
preset:tiny-mt         a translator (MarianMTModel, random weights, a SentencePiece vocabulary of shapes-world
                       captions): the real class and tokenizer, for tests and benchmarks (its English is noise)
"""

from __future__ import annotations

from pathlib import Path

from iap.errors import IapError

PRESETS = {"preset:tiny", "preset:tiny-sd2", "preset:tiny-sdxl", "preset:shapes-teacher", "preset:shapes-teacher-xl"}
SHAPES_TEACHER = Path(__file__).resolve().parent / "shapes-teacher"
SHAPES_TEACHER_XL = SHAPES_TEACHER.parent / "shapes-teacher-xl"
SHAPES_LORA = SHAPES_TEACHER.parent / "shapes-lora"  # a LoRA of the teacher (iap.shapes.lora); not a base


TINY_MT = "preset:tiny-mt"


def resolve_translator(name: str) -> str:
    """A translation model argument with the tiny translator preset replaced by its folder (written once)."""
    if name != TINY_MT:
        return name
    from iap.presets.tiny import write_tiny_translator
    from iap.system.storage import local_cache
    return str(write_tiny_translator(local_cache("presets", "tiny-mt")))


def resolve_model(name: str) -> str:
    """One base-model argument with a preset name replaced by its folder (see resolve)."""
    return resolve(name, "")[0]


def _tiny(workdir: str | Path, name: str = "tiny") -> Path:
    from iap.presets.tiny import TINY_PRESETS, write_tiny
    from iap.system.storage import local_workdir
    folder = local_workdir(str(workdir)) / "models" / name  # a remote workdir keeps its presets on this machine
    if not (folder / "preset.json").exists():
        write_tiny(folder, TINY_PRESETS[name], name)
    return folder


def resolve(base: str, zh_encoder: str, workdir: str | Path | None = None) -> tuple[str, str]:
    """Replace preset names by folders. A tiny preset is written under workdir, else in the local cache: the
    same bytes wherever it is written."""
    if workdir is None:
        from iap.system.storage import local_cache
        workdir = local_cache("presets")
    unknown = {b for b in (base, zh_encoder) if b.startswith("preset:") and b not in PRESETS}
    if unknown:
        raise IapError(f"unknown preset {', '.join(sorted(unknown))}; known: {', '.join(sorted(PRESETS))}")
    if base in ("preset:shapes-teacher", "preset:shapes-teacher-xl"):
        base = str(SHAPES_TEACHER_XL if base.endswith("-xl") else SHAPES_TEACHER)
    elif base in PRESETS:
        base = str(_tiny(workdir, base.removeprefix("preset:")) / "base")
    if zh_encoder in PRESETS:  # the shapes teacher's Chinese encoder is the tiny preset's BERT
        name = zh_encoder.removeprefix("preset:") if zh_encoder.startswith("preset:tiny") else "tiny"
        zh_encoder = str(_tiny(workdir, name) / "zh_encoder")
    return base, zh_encoder
