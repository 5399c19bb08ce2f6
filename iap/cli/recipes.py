"""Maintainer recipes: how the committed presets were made (tiny presets, the shapes teachers, the LoRA)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from iap.cli.common import console, models_app


@models_app.command("tiny")
def models_tiny(
    folder: Path, seed: int = 0,
    shape: Annotated[Literal["sd1", "sd2", "sdxl"], typer.Option(
        help="sd1: SD-1.x-shaped; sd2: SD-2.x-shaped (v-prediction, wider cross-attention than the Chinese BERT); "
             "sdxl: SDXL-shaped (two text towers, pooled embedding, time ids)")] = "sd1",
) -> None:
    """Write a tiny preset (random-init base pipeline + Chinese BERT) to FOLDER."""
    from iap.presets.tiny import TINY_PRESETS, write_tiny
    name = {"sd1": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}[shape]
    write_tiny(folder, replace(TINY_PRESETS[name], seed=seed), name)
    console.print(f"tiny preset written: {folder}/base (Stable Diffusion folder), {folder}/zh_encoder")


@models_app.command("shapes-teacher")
def models_shapes_teacher(
    folder: Path, seed: int = 0,
    unet_steps: Annotated[int, typer.Option(help="denoiser training steps (the committed teacher: 3000)")] = 3000,
    evaluate: Annotated[bool, typer.Option(help="then measure English accuracy on held-out combos")] = True,
    xl: Annotated[bool, typer.Option(help="SDXL architecture (two text towers, pooled embedding, time ids): "
                                          "the committed preset:shapes-teacher-xl")] = False,
) -> None:
    """Train the shapes teacher (a small English Stable Diffusion that draws the shapes world) from scratch
    on CPU into FOLDER. The committed presets (preset:shapes-teacher, preset:shapes-teacher-xl) are this
    command with the defaults (and --xl)."""
    from iap.shapes.teacher import (
        GUIDANCE,
        TEACHER_XL,
        TeacherConfig,
        english_accuracy,
        held_out_prompts,
        train_shapes_teacher,
        write_card,
    )
    cfg = TEACHER_XL if xl else TeacherConfig()
    train_shapes_teacher(folder, replace(cfg, seed=seed, unet_steps=unet_steps), log=console.print)
    prompts = held_out_prompts(per_combo=3) if evaluate else []
    acc = {g: english_accuracy(folder, prompts, guidance_scale=g) for g in (GUIDANCE, 7.5)} if evaluate else {}
    write_card(folder, acc, len(prompts))
    for g, a in acc.items():
        console.print(f"held-out combos, {len(prompts)} English prompts, guidance {g}: " +
                      ", ".join(f"{k} {v:.1%}" for k, v in a.items()))


@models_app.command("shapes-lora")
def models_shapes_lora(
    folder: Path, seed: int = 0,
    steps: Annotated[int, typer.Option(help="LoRA training steps (the committed LoRA: 1000)")] = 1000,
) -> None:
    """Train a LoRA of the shapes teacher (red drawn as blue) into FOLDER and measure its effect on English
    prompts. The committed preset (iap/presets/shapes-lora) is this command with the defaults."""
    from iap.presets.names import SHAPES_TEACHER
    from iap.shapes.lora import LoraTrainConfig, train_lora, write_card
    train_lora(SHAPES_TEACHER, folder, LoraTrainConfig(seed=seed, steps=steps), log=console.print)
    rates = write_card(folder, SHAPES_TEACHER)
    console.print(f"held-out combos, English prompts: effect rate {rates['with']['effect_rate']:.0%}, "
                  f"leak rate {rates['with']['leak_rate']:.0%} (without the LoRA: "
                  f"{rates['without']['effect_rate']:.0%}, {rates['without']['leak_rate']:.0%})")


