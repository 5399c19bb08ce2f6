"""A checkpoint's evaluation, sectioned by whose prompts were scored: the trained Chinese encoder, the encoder it
started from, and the base's own English prompts; beside them the reference level and the counts.

Stages pass `Metrics`; `flat()` is the one flat spelling (`untrained_<name>`, `teacher_en_<name>`) kept only
where metrics are stored by name: registry entries and their gate settings, trackers, Prefect artifacts, the
compare table and summary.json.
"""

from __future__ import annotations

from pydantic import BaseModel

PREFIXES = {"trained": "", "untrained": "untrained_", "english": "teacher_en_"}  # section -> flat prefix
OUTSIDE = ("mismatched_caption_loss", "heldout_pairs", "generated_prompts", "report")  # in no section


class Metrics(BaseModel):
    trained: dict[str, float] = {}  # the checkpoint's Chinese encoder on the held-out pairs
    untrained: dict[str, float] = {}  # the encoder it started from, on the same pairs (when given)
    english: dict[str, float] = {}  # the base's English prompts (image scores): the level a transfer can reach
    mismatched_caption_loss: float | None = None  # the loss of another sample's English states: a scale
    heldout_pairs: int = 0
    generated_prompts: int | None = None  # held-out prompts drawn (None: no images)
    report: str | None = None  # report.html

    def flat(self) -> dict[str, float | int | str]:
        out: dict = {}
        for section, prefix in PREFIXES.items():
            out |= {prefix + k: v for k, v in getattr(self, section).items()}
        return out | {k: getattr(self, k) for k in OUTSIDE if getattr(self, k) is not None}

    @classmethod
    def from_flat(cls, flat: dict) -> Metrics:
        """The inverse of flat(); a name with no known prefix is the trained encoder's."""
        sections: dict[str, dict] = {s: {} for s in PREFIXES}
        for name, value in flat.items():
            if name in OUTSIDE:
                continue
            section = next((s for s, p in PREFIXES.items() if p and name.startswith(p)), "trained")
            sections[section][name.removeprefix(PREFIXES[section])] = value
        return cls(**sections, **{k: flat[k] for k in OUTSIDE if k in flat})

    def names(self) -> list[str]:
        """Every scored metric's name, without its section, trained first."""
        return list(dict.fromkeys([*self.trained, *self.english, *self.untrained]))
