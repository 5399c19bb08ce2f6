"""A LoRA of the shapes teacher, to show that the base's add-ons keep working with Chinese prompts.

IAP trains only the text encoder; the UNet is the base's, byte for byte, so an add-on made for the base
loads into the Chinese pipeline. Whether it *acts* the same is a question about the Chinese states: this
LoRA is text-dependent on purpose: it redraws what the prompt calls red in blue (a red shape becomes a blue
one; every other colour stays as prompted), so it fires only when its cross-attention layers read "red" /
"红色" in the states they are given. It is trained as diffusers' train_text_to_image_lora.py trains one (peft adapters on
the attention projections of the frozen UNet, epsilon loss, English captions) and saved with
`StableDiffusionPipeline.save_lora_weights`; a user loads it with the stock `pipe.load_lora_weights`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from iap import shapes
from iap.shapes.metrics import shape_colours

LORA_FILE = "pytorch_lora_weights.safetensors"
TRIGGER, EFFECT = "red", "blue"  # the LoRA draws red as blue


@dataclass(frozen=True)
class LoraTrainConfig:
    seed: int = 0
    rank: int = 8
    steps: int = 1000
    lr: float = 3e-3
    batch_size: int = 32
    per_combo: int = 8


def _recolour(colour: str) -> str:
    return EFFECT if colour == TRIGGER else colour


def _effect_combo(combo: shapes.Combo) -> shapes.Combo | None:
    """What the LoRA draws for a prompted combo (None when the result would be invisible: blue on blue)."""
    drawn = shapes.Combo(combo.size, _recolour(combo.color), combo.shape, _recolour(combo.bg))
    return None if drawn.color == drawn.bg else drawn


def training_pool(cfg: LoraTrainConfig, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Images drawn with the LoRA's effect, captioned with the original English prompt (seen combos only)."""
    rng = random.Random(cfg.seed)
    images, captions = [], []
    for combo in shapes.all_combos():
        if shapes.is_held_out(combo) or _effect_combo(combo) is None:
            continue
        for _ in range(cfg.per_combo):
            sample = shapes.Sample(combo, rng.randrange(len(shapes.EN_TEMPLATES)), rng.randrange(2**31))
            drawn = shapes.Sample(_effect_combo(combo), sample.template, sample.seed)
            images.append(np.asarray(shapes.render(drawn, image_size), dtype=np.float32))
            captions.append(sample.caption_en)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0, captions


def train_lora(teacher: str | Path, out: str | Path, cfg: LoraTrainConfig = LoraTrainConfig(),
               log: Callable[[str], None] = logging.getLogger(__name__).info) -> Path:
    """Train the LoRA on the teacher's frozen UNet and save it (diffusers LoRA format) under `out`."""
    from diffusers import DDPMScheduler
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None, requires_safety_checker=False)
    unet, vae = pipe.unet.requires_grad_(False), pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    pixels, captions = training_pool(cfg, int(vae.config.sample_size))
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean
                             for i in range(0, len(pixels), 256)]) * vae.config.scaling_factor
        states = pipe.encode_prompt(captions, "cpu", 1, False)[0]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    unet.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=g)
        noise = torch.randn(latents[idx].shape, generator=g)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        pred = unet(noise_scheduler.add_noise(latents[idx], noise, t), t, states[idx]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == cfg.steps - 1:
            log(f"lora step {step}: loss {loss.item():.5f}")
    out = Path(out)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        safe_serialization=True)
    seconds = round(time.perf_counter() - started, 1)
    (out / "lora.json").write_text(json.dumps({"preset": "shapes-lora", "effect": f"{TRIGGER} drawn as {EFFECT}",
                                               "train_seconds": seconds, "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), **asdict(cfg)}, indent=2))
    log(f"lora written to {out} in {seconds} s")
    return out


def effect_prompts(seed: int = 0, per_combo: int = 1) -> list[shapes.Sample]:
    """Held-out combos (never seen by the teacher, its LoRA or the demo's encoder training) with a red shape
    (where the LoRA should act) or a shape of another colour than red or blue (where it should not), on a
    background that is neither red nor blue."""
    from iap.shapes.teacher import held_out_prompts
    return [s for s in held_out_prompts(per_combo, seed)
            if s.combo.bg not in (TRIGGER, EFFECT) and s.combo.color != EFFECT]


def effect_rates(images: list, samples: list[shapes.Sample]) -> dict[str, float]:
    """How often the LoRA's effect shows: red prompts drawn blue (the effect rate), and other colours drawn
    blue (the leak rate, which should stay near 0)."""
    blue = [shape_colours(i)[0] == EFFECT for i in images]
    on = [b for b, s in zip(blue, samples, strict=True) if s.combo.color == TRIGGER]
    off = [b for b, s in zip(blue, samples, strict=True) if s.combo.color != TRIGGER]
    return {"effect_rate": float(np.mean(on)), "leak_rate": float(np.mean(off)), "triggered": len(on),
            "others": len(off)}


def lora_effect(pipeline: str | Path, lora: str | Path, language: str, samples: list[shapes.Sample],
                steps: int = 20, guidance_scale: float = 3.0) -> dict[str, dict[str, float]]:
    """Effect and leak rates of the LoRA loaded with the stock `load_lora_weights` into a pipeline folder,
    with prompts in `language` (en or zh), and the same pipeline without it (same seeds)."""
    from iap.models.generate import generate, load_pipeline
    pipe = load_pipeline(pipeline)
    prompts = [s.caption_en if language == "en" else s.caption_zh for s in samples]
    without = effect_rates(generate(pipe, prompts, steps=steps, guidance_scale=guidance_scale), samples)
    pipe.load_lora_weights(str(lora))
    with_lora = effect_rates(generate(pipe, prompts, steps=steps, guidance_scale=guidance_scale), samples)
    return {"without": without, "with": with_lora}


CARD = """# shapes LoRA: red drawn as blue

A LoRA of the shapes teacher (`preset:shapes-teacher`) in diffusers' LoRA format: rank {rank} adapters on
`to_q`, `to_k`, `to_v`, `to_out.0` of every attention layer of its UNet, trained with the teacher frozen
(as diffusers' `train_text_to_image_lora.py` does) so that whatever the prompt calls red is drawn blue. It
shows that an add-on made for the English base works in the Chinese pipeline IAP exports: load it with the
stock `pipe.load_lora_weights("{folder}")` into either.

## Reproduce

    python -m iap models shapes-lora {folder} --seed {seed}

## Training

- data: the teacher's seen combos, {per_combo} images each, drawn with red replaced by blue (a combo that
  would become blue on blue is left out) and captioned with the original English prompt
- {steps} AdamW steps, lr {lr}, batch {batch_size}, epsilon loss on the teacher's latents and English states
- seed {seed}; {seconds} s on {threads} CPU threads (torch {torch})

## Effect on held-out combos, English prompts, teacher (DDIM 20 steps, guidance 3)

{prompts} prompts on backgrounds neither red nor blue: {triggered} ask for a red shape, {others} for another
colour (not blue). Effect rate: red prompts drawn blue; leak rate: other prompts drawn blue.

| | effect rate | leak rate |
|---|---|---|
| teacher | {without_effect:.0%} | {without_leak:.0%} |
| teacher + LoRA | {with_effect:.0%} | {with_leak:.0%} |
"""


def write_card(folder: str | Path, teacher: str | Path) -> dict:
    """Measure the English effect, write README.md (the card) and SHA256SUMS; returns the rates."""
    from iap.shapes.teacher import write_sums
    folder = Path(folder)
    samples = effect_prompts(per_combo=2)
    rates = lora_effect(teacher, folder, "en", samples)
    meta = json.loads((folder / "lora.json").read_text())
    cfg = LoraTrainConfig(**{k: v for k, v in meta.items() if k in LoraTrainConfig.__dataclass_fields__})
    (folder / "README.md").write_text(CARD.format(
        **asdict(cfg), folder=folder.as_posix(), seconds=meta["train_seconds"], threads=meta["threads"],
        torch=meta["torch"], prompts=len(samples), triggered=rates["with"]["triggered"],
        others=rates["with"]["others"], without_effect=rates["without"]["effect_rate"],
        without_leak=rates["without"]["leak_rate"], with_effect=rates["with"]["effect_rate"],
        with_leak=rates["with"]["leak_rate"]))
    write_sums(folder)
    return rates
