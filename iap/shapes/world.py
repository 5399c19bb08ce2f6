"""The shapes world as a data world of evaluation (iap.evaluation.worlds): rows carry a `combo`; one prompt per combo is
drawn; images are scored by their colours and shape (iap.shapes.metrics)."""

from __future__ import annotations

from PIL import Image

from iap.shapes.metrics import shapes_accuracy


class ShapesWorld:
    definitions = {
        "colour_accuracy": "shapes world: images whose shape colour and background colour both match the prompt",
        "shape_colour_accuracy": "shapes world: images whose shape colour matches the prompt",
        "background_colour_accuracy": "shapes world: images whose background colour matches the prompt",
        "shape_class_accuracy": "shapes world: images whose shape (by mask overlap) matches the prompt",
    }

    def owns(self, rows: list[dict]) -> bool:
        return all("combo" in r for r in rows)

    def prompts(self, rows: list[dict]) -> list[dict]:
        """One row per distinct combo, so accuracy is over combos, not repeats."""
        seen: dict[str, dict] = {}
        for r in rows:
            seen.setdefault(r["combo"], r)
        return list(seen.values())

    def score(self, images: list[Image.Image], rows: list[dict]) -> dict[str, float]:
        """Prompted shape colour, background colour and shape class from the combo name (size-colour-shape-on-bg)."""
        fg = [r["combo"].split("-on-")[0].split("-") for r in rows]
        return shapes_accuracy(images, [f[1] for f in fg], [r["combo"].split("-on-")[1] for r in rows],
                               [f[2] for f in fg])


WORLD = ShapesWorld()
