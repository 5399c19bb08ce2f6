"""The shapes teacher: the committed files are intact and small, it draws held-out combos from English
prompts, and its trainer is deterministic and writes an ordinary diffusers folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from iap import shapes
from iap.models import load_base
from iap.presets.names import SHAPES_TEACHER, SHAPES_TEACHER_XL
from iap.shapes.metrics import shape_class, shapes_accuracy
from iap.shapes.teacher import (
    GUIDANCE,
    TEACHER_XL,
    TeacherConfig,
    english_accuracy,
    held_out_prompts,
    train_shapes_teacher,
    verify,
)


@pytest.mark.parametrize(("folder", "n_weights"), [(SHAPES_TEACHER, 3), (SHAPES_TEACHER_XL, 4)], ids=["sd", "xl"])
def test_committed_teacher_is_intact_small_and_safetensors_only(folder, n_weights):
    assert verify(folder) == []
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    weights = [f for f in files if f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}]
    assert {f.suffix for f in weights} == {".safetensors"} and len(weights) == n_weights
    listed = {line.split(maxsplit=1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    assert {f.relative_to(folder).as_posix() for f in files} - listed == {"SHA256SUMS"}


def test_a_changed_byte_is_detected(tmp_path):
    import shutil
    copy = Path(shutil.copytree(SHAPES_TEACHER, tmp_path / "t"))
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert verify(copy) == ["unet/diffusion_pytorch_model.safetensors"]


def test_teacher_draws_held_out_combos_from_english_prompts():
    prompts = held_out_prompts(per_combo=1)
    assert prompts and all(shapes.is_held_out(s.combo) for s in prompts)
    acc = english_accuracy(SHAPES_TEACHER, prompts, guidance_scale=GUIDANCE)
    print(acc)
    assert acc["colour_accuracy"] >= 0.90
    assert acc["shape_class_accuracy"] > 0.40  # chance is 0.25; reported, not gated


def test_teacher_loads_as_a_base_model():
    base = load_base(SHAPES_TEACHER)
    assert base.cross_attention_dim == 64 and base.max_length == 32
    assert base.encode_english(["a big red circle on a blue background"]).shape == (1, 32, 64)


@pytest.mark.parametrize("xl", [False, True], ids=["sd", "xl"])
def test_trainer_is_deterministic_and_writes_a_diffusers_folder(xl, tmp_path):
    from dataclasses import replace
    cfg = replace(TEACHER_XL if xl else TeacherConfig(), vae_steps=3, unet_steps=3, pool_per_combo=1, batch_size=8)
    a = train_shapes_teacher(tmp_path / "a", cfg, log=lambda _: None)
    b = train_shapes_teacher(tmp_path / "b", cfg, log=lambda _: None)
    weights = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.safetensors"] + (["text_encoder_2/model.safetensors"] if xl else [])
    for sub in weights:
        assert (a / sub).read_bytes() == (b / sub).read_bytes(), sub
    from iap.models.generate import load_pipeline
    pipe = load_pipeline(a)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline")
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"


@pytest.mark.parametrize("px", [32, 64])
def test_shape_rules_classify_rendered_images(px):
    samples = shapes.samples(400, seed=11)
    images = [shapes.render(s, px) for s in samples]
    acc = shapes_accuracy(images, [s.combo.color for s in samples], [s.combo.bg for s in samples],
                          [s.combo.shape for s in samples])
    assert acc == {"shape_colour_accuracy": 1.0, "background_colour_accuracy": 1.0, "colour_accuracy": 1.0,
                   "shape_class_accuracy": 1.0}
    from PIL import Image
    assert shape_class(Image.new("RGB", (32, 32), (10, 200, 10))) == "none"
