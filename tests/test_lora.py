"""The frozen UNet keeps the base's ecosystem: a LoRA made for the English shapes teacher, loaded with the
stock `load_lora_weights` into the Chinese pipeline IAP exported, acts on Chinese prompts about as often as
on English ones. The LoRA is text-dependent (it redraws what the prompt calls red in blue), so it acts only
when its cross-attention layers read "红色" in the Chinese states as they read "red" in the English ones."""

from __future__ import annotations

import pytest

from iap.presets.names import SHAPES_LORA, SHAPES_TEACHER
from iap.shapes.lora import LORA_FILE, effect_prompts, lora_effect
from iap.shapes.teacher import verify


def test_the_committed_lora_is_intact_and_safetensors_only():
    assert verify(SHAPES_LORA) == []
    files = {f.name for f in SHAPES_LORA.iterdir()}
    assert files == {LORA_FILE, "lora.json", "README.md", "SHA256SUMS"}


@pytest.mark.e2e
def test_a_lora_of_the_base_acts_on_chinese_prompts_as_on_english(demo_summary):
    samples = effect_prompts(per_combo=2)
    en = lora_effect(SHAPES_TEACHER, SHAPES_LORA, "en", samples)
    zh = lora_effect(demo_summary["pipeline_dir"], SHAPES_LORA, "zh", samples)
    print({"en": en, "zh": zh})
    for rates in (en, zh):
        assert rates["without"]["effect_rate"] <= 0.1  # without the LoRA, red prompts are drawn red
        assert rates["with"]["leak_rate"] <= 0.2  # with it, other colours stay as prompted
    assert en["with"]["effect_rate"] >= 0.7
    assert zh["with"]["effect_rate"] >= en["with"]["effect_rate"] - 0.15
