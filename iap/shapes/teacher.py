"""The shapes teacher: a small English Stable Diffusion trained from scratch on the shapes world.

The tiny preset has random weights, so its images are noise and nobody can see a transfer work. This
teacher can draw: from an English prompt it paints the shape's colour, the background colour and the
shape class. It has the real model's component classes (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel + CLIPTokenizer, DDIM) and is saved as an ordinary diffusers folder.

Training, all on CPU from a fixed seed, in two phases:
1. the VAE learns to reconstruct shapes-world images (pixel MSE + a small KL term);
2. the CLIP text encoder and the UNet learn epsilon-prediction on the VAE's latents (SD's noise
   schedule), with 10% empty prompts so classifier-free guidance works.
Combos for which `shapes.is_held_out` holds are never shown, so the teacher's own accuracy on them
measures composition, not memory.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from iap import shapes
from iap.models.vocab import write_clip_bpe
from iap.models.xl import read_towers


@dataclass(frozen=True)
class TeacherConfig:
    seed: int = 0
    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks: 32 px -> 8x8x4 latents
    unet_channels: tuple[int, ...] = (32, 64)
    hidden: int = 64  # CLIP hidden size = cross_attention_dim (the tiny Chinese encoder's size)
    text_layers: int = 2
    # SDXL architecture: a second, projected CLIP tower; the UNet attends over both towers' penultimate states
    # (hidden + hidden_2 wide) and takes tower 2's pooled embedding and the time ids as its added embedding
    xl: bool = False
    hidden_2: int = 64
    max_length: int = 32  # the longest Chinese caption is 19 tokens
    vae_steps: int = 600
    vae_lr: float = 1e-3
    unet_steps: int = 3000
    unet_lr: float = 1e-3
    batch_size: int = 64
    empty_prompt_fraction: float = 0.1
    pool_per_combo: int = 24  # pre-rendered images per training combo


TEACHER_XL = TeacherConfig(xl=True, hidden=32, hidden_2=64, text_layers=3)
XL_TIME_EMBED = 8  # addition_time_embed_dim (SDXL: 256)


def _clip(cfg: TeacherConfig, tmp: Path, hidden: int, projected: bool = False) -> tuple[CLIPTextModel, CLIPTokenizer]:
    write_clip_bpe(tmp / "clip_tok", shapes.english_words())
    tok = CLIPTokenizer.from_pretrained(tmp / "clip_tok", model_max_length=cfg.max_length)
    config = CLIPTextConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=hidden, intermediate_size=4 * hidden,
        num_attention_heads=4, num_hidden_layers=cfg.text_layers, max_position_embeddings=cfg.max_length,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({"projection_dim": hidden} if projected else {}),
    )
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(config), tok


class TextSide(torch.nn.Module):
    """The teacher's text conditioning, as its pipeline builds it: SD's last hidden state, or SDXL's two
    penultimate states concatenated with tower 2's pooled embedding and the time ids (added_cond)."""

    def __init__(self, cfg: TeacherConfig, tmp: Path):
        super().__init__()
        self.text, self.tokenizer = _clip(cfg, tmp, cfg.hidden)
        self.text_2 = _clip(cfg, tmp, cfg.hidden_2, projected=True)[0] if cfg.xl else None
        self.time_ids = torch.tensor([cfg.image_size, cfg.image_size, 0, 0, cfg.image_size, cfg.image_size],
                                     dtype=torch.float32)

    def forward(self, ids: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
        """`drop`: rows trained unconditional. SD drops to the empty prompt's ids (done by the caller); SDXL
        to zero states and pooled, which its pipeline uses for the negative prompt
        (force_zeros_for_empty_prompt)."""
        if self.text_2 is None:
            return self.text(ids)[0], None
        states, pooled = read_towers(self.text, self.text_2, ids, ids)
        keep = (~drop).float()
        return states * keep[:, None, None], {"text_embeds": pooled * keep[:, None],
                                              "time_ids": self.time_ids.expand(len(ids), -1)}


def _vae(cfg: TeacherConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=cfg.vae_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=8, sample_size=cfg.image_size, mid_block_add_attention=False,
    )


def _unet(cfg: TeacherConfig) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    xl = dict(cross_attention_dim=cfg.hidden + cfg.hidden_2, addition_embed_type="text_time",
              addition_time_embed_dim=XL_TIME_EMBED, projection_class_embeddings_input_dim=cfg.hidden_2 + 6 * XL_TIME_EMBED,
              transformer_layers_per_block=(1, 2), use_linear_projection=True) if cfg.xl else {}
    return UNet2DConditionModel(
        sample_size=cfg.image_size // 2 ** (len(cfg.vae_channels) - 1), in_channels=4, out_channels=4,
        layers_per_block=1, block_out_channels=cfg.unet_channels, norm_num_groups=16, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        **({"cross_attention_dim": cfg.hidden} | xl),
    )


def _schedulers() -> tuple[DDPMScheduler, DDIMScheduler]:
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # as SD v1.5
    return DDPMScheduler(**betas, clip_sample=False), DDIMScheduler(
        **betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def training_pool(cfg: TeacherConfig) -> tuple[torch.Tensor, list[str]]:
    """Rendered images in [-1, 1] and their English captions, for every combo that is not held out."""
    rng = random.Random(cfg.seed)
    images, captions = [], []
    for combo in shapes.all_combos():
        if shapes.is_held_out(combo):
            continue
        for _ in range(cfg.pool_per_combo):
            s = shapes.Sample(combo, rng.randrange(len(shapes.EN_TEMPLATES)), rng.randrange(2**31))
            images.append(np.asarray(shapes.render(s, cfg.image_size), dtype=np.float32))
            captions.append(s.caption_en)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, captions


def _train_vae(vae: AutoencoderKL, pixels: torch.Tensor, cfg: TeacherConfig, log: Callable[[str], None]) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    vae.train()
    for step in range(cfg.vae_steps):
        x = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=g)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.5f}")
    vae.eval()


def _train_denoiser(unet: UNet2DConditionModel, text: TextSide, ids: torch.Tensor, empty: torch.Tensor,
                    latents: torch.Tensor, cfg: TeacherConfig, log: Callable[[str], None]) -> None:
    noise_scheduler, _ = _schedulers()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.unet_lr, total_steps=cfg.unet_steps, pct_start=0.05)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    started = time.perf_counter()
    unet.train()
    text.train()
    for step in range(cfg.unet_steps):
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=g)
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.empty_prompt_fraction
        batch_ids[drop] = empty
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        states, added = text(batch_ids, drop)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, states, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)")
    unet.eval()
    text.eval()


def train_shapes_teacher(folder: str | Path, cfg: TeacherConfig = TeacherConfig(),
                         log: Callable[[str], None] = logging.getLogger(__name__).info) -> Path:
    """Train the teacher from cfg.seed and save it to folder as a StableDiffusionPipeline folder."""
    folder = Path(folder)
    started = time.perf_counter()
    torch.set_flush_denormal(True)  # tiny weights/gradients go denormal late in training: 3x slower steps on CPU
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        text = TextSide(cfg, Path(tmp))
    tokenizer = text.tokenizer
    vae, unet = _vae(cfg), _unet(cfg)
    pixels, captions = training_pool(cfg)
    log(f"pool: {len(pixels)} images of {len(set(captions))} captions")
    _train_vae(vae, pixels, cfg, log)
    with torch.no_grad():
        means = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    latents = means * vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", max_length=cfg.max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=cfg.max_length, return_tensors="pt").input_ids[0]
    _train_denoiser(unet, text, ids, empty, latents, cfg, log)
    _, ddim = _schedulers()
    if cfg.xl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text.text, text_encoder_2=text.text_2, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer, unet=unet, scheduler=ddim,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.text, tokenizer=tokenizer, unet=unet, scheduler=ddim,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    seconds = round(time.perf_counter() - started, 1)
    name = "shapes-teacher-xl" if cfg.xl else "shapes-teacher"
    (folder / "teacher.json").write_text(json.dumps({"preset": name, "train_seconds": seconds,
                                                     "torch": torch.__version__,
                                                     "threads": torch.get_num_threads(), **asdict(cfg)}, indent=2))
    log(f"teacher written to {folder} in {seconds} s")
    return folder


def held_out_prompts(per_combo: int = 1, seed: int = 0) -> list[shapes.Sample]:
    """Samples of the combos the teacher never saw (template chosen by seed)."""
    rng = random.Random(seed)
    return [shapes.Sample(c, rng.randrange(len(shapes.EN_TEMPLATES)), rng.randrange(2**31))
            for c in shapes.all_combos() if shapes.is_held_out(c) for _ in range(per_combo)]


GUIDANCE = 3.0  # evaluation guidance for this teacher: a small model over-saturates colours at SD's 7.5


def english_accuracy(folder: str | Path, samples: list[shapes.Sample], steps: int = 20,
                     guidance_scale: float = GUIDANCE) -> dict[str, float]:
    """The teacher's own accuracy: generate from English prompts, classify by pixel statistics."""
    from iap.models.generate import generate, load_pipeline
    from iap.shapes.metrics import shapes_accuracy
    images = generate(load_pipeline(folder), [s.caption_en for s in samples], seed=0, steps=steps,
                      guidance_scale=guidance_scale)
    return shapes_accuracy(images, [s.combo.color for s in samples], [s.combo.bg for s in samples],
                           [s.combo.shape for s in samples])


CARD = """# {title}

{architecture} trained from
scratch on CPU on the synthetic shapes world (`iap.shapes`). It draws the shape's colour, the
background colour and the shape class from an English prompt, so IAP can be demonstrated and tested
offline on images that mean something. {role}

## Reproduce

    python -m iap models shapes-teacher iap/presets/{preset} --seed {seed} --unet-steps {unet_steps}{flag}

## Training

- data: {images} rendered {image_size}x{image_size} images, {per_combo} per combo (size x colour x shape x
  background), English captions from the three templates; the {held_out} combos for which
  `shapes.is_held_out` holds are never shown
- phase 1, VAE: {vae_steps} AdamW steps, lr {vae_lr}, batch {batch_size}, pixel MSE + 1e-6 KL; latents
  {latent}x{latent}x4, scaling factor {scaling:.4f} (1 / std of the training latents)
- phase 2, {text_towers} and UNet (channels
  {unet_channels}) together: {unet_steps} AdamW steps, one-cycle lr {unet_lr}, batch {batch_size}, epsilon
  prediction with SD v1.5's noise schedule, {empty:.0%} empty prompts for classifier-free guidance
- seed {seed}; {seconds} s on {threads} CPU threads (torch {torch})

## Accuracy on held-out combos (English prompts, DDIM 20 steps)

Generated images classified by pixel statistics (`iap.shapes.metrics`), {prompts} prompts (3 per
held-out combo). Evaluate at guidance {guidance} (what `iap demo` uses): at SD's 7.5 this small model
over-saturates and confuses close colours (orange/yellow).

{accuracy}
"""


# what differs between the cards of the two teachers
CARD_SD = {
    "title": "shapes teacher", "preset": "shapes-teacher", "flag": "",
    "architecture": "A small English Stable Diffusion (diffusers `StableDiffusionPipeline` folder: `AutoencoderKL`,\n"
                    "`UNet2DConditionModel`, `CLIPTextModel` + a generated `CLIPTokenizer`, `DDIMScheduler`)",
    "role": "It is the base model of `iap demo` and `iap-train/smoke`\n(`preset:shapes-teacher`).",
    "text_towers": "CLIP text encoder ({hidden} wide, {text_layers} layers, {max_length} tokens)",
}
CARD_XL = {
    "title": "shapes teacher XL", "preset": "shapes-teacher-xl", "flag": " --xl",
    "architecture": "A small English Stable Diffusion of SDXL's architecture (diffusers `StableDiffusionXLPipeline`\n"
                    "folder: `AutoencoderKL`, `UNet2DConditionModel` with the added time embedding (`text_time`),\n"
                    "`CLIPTextModel` + `CLIPTextModelWithProjection` sharing a generated `CLIPTokenizer`, `DDIMScheduler`)",
    "role": "It is the base model of `iap demo --base preset:shapes-teacher-xl`\n(`preset:shapes-teacher-xl`).",
    "text_towers": "two CLIP text towers ({hidden} + {hidden_2} wide, {text_layers} layers, {max_length} tokens; the\n"
                   "  UNet attends over both penultimate states and takes tower 2's pooled embedding and the time\n"
                   "  ids; dropped captions are zero states and pooled, as SDXL's `force_zeros_for_empty_prompt`)",
}


def write_card(folder: str | Path, accuracy: dict[float, dict[str, float]], prompts: int) -> None:
    """README.md (the model card) and SHA256SUMS over every file of the folder."""
    folder = Path(folder)
    meta = json.loads((folder / "teacher.json").read_text())
    cfg = TeacherConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()
                           if k in TeacherConfig.__dataclass_fields__})
    vae = json.loads((folder / "vae" / "config.json").read_text())
    held_out = sum(shapes.is_held_out(c) for c in shapes.all_combos())
    parts = CARD_XL if cfg.xl else CARD_SD
    parts = parts | {"text_towers": parts["text_towers"].format(**asdict(cfg))}
    (folder / "README.md").write_text(CARD.format(
        **parts, **asdict(cfg), images=(len(shapes.all_combos()) - held_out) * cfg.pool_per_combo,
        per_combo=cfg.pool_per_combo, held_out=held_out, latent=cfg.image_size // 2 ** (len(cfg.vae_channels) - 1),
        scaling=vae["scaling_factor"], empty=cfg.empty_prompt_fraction, seconds=meta["train_seconds"],
        threads=meta.get("threads", "?"), torch=meta["torch"], prompts=prompts,
        guidance=GUIDANCE, accuracy=_accuracy_table(accuracy)))
    write_sums(folder)


def write_sums(folder: Path) -> None:
    """SHA256SUMS over every other file of a committed preset folder (checked by `verify`)."""
    import hashlib
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(folder).as_posix()}\n" for f in files))


def _accuracy_table(accuracy: dict[float, dict[str, float]]) -> str:
    if not accuracy:
        return "(not measured)"
    keys = list(next(iter(accuracy.values())))
    head = "| guidance | " + " | ".join(k.replace("_", " ") for k in keys) + " |\n"
    return head + "|---" * (len(keys) + 1) + "|\n" + "".join(
        f"| {g} | " + " | ".join(f"{a[k]:.1%}" for k in keys) + " |\n" for g, a in accuracy.items())


def verify(folder: str | Path) -> list[str]:
    """Files whose SHA-256 differs from SHA256SUMS (or are missing); [] when the folder is intact."""
    import hashlib
    folder = Path(folder)
    bad = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        f = folder / name
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad
