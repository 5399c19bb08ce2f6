"""Beyond SD 1.x: an SD-2-shaped base (v-prediction, a 96-wide cross-attention) with a Chinese encoder of
another width (a 64-wide BERT, trained through a learned projection), and one message for the bases IAP
does not support. The SD-1.x-shaped checks that also run on this preset are parametrized in place
(test_objective, test_cache); SDXL has its own file (test_sdxl)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel

from iap.errors import IapError
from iap.models import load_base, load_chinese_encoder
from iap.models.compat import check_pair
from iap.objective import Teacher
from iap.training.checkpoint import latest_checkpoint
from tests.helpers import ENGINE_OPTIONS, IAP, Stop, assert_pivot_equals_live, train_briefly


def test_a_projected_encoder_keeps_every_real_tokens_states(sd2_dir, sd2_encoder):
    """The BERT is copied into transformers' AltCLIPTextModel: its states are the BERT's for every real token,
    and the projection to the UNet's width starts norm-preserving and the same on every load."""
    model = sd2_encoder.model.eval()
    assert type(model).__name__ == "AltCLIPTextModel" and sd2_encoder.hidden_size == 96
    bert = BertModel.from_pretrained(sd2_dir / "zh_encoder").eval()
    ids = sd2_encoder.tokenizer(["蓝色背景上的一个大红色圆形"], return_tensors="pt").input_ids  # no padding
    with torch.no_grad():
        torch.testing.assert_close(model.roberta(ids)[0], bert(ids)[0])
    w = model.transformation.weight
    torch.testing.assert_close(w.T @ w, torch.eye(64), atol=1e-5, rtol=0)
    again = load_chinese_encoder(sd2_dir / "zh_encoder", 96)
    assert torch.equal(again.model.transformation.weight, w)


def test_resume_through_the_projection_is_exact(sd2_dir, sd2_base, tmp_path):
    fresh = lambda: load_chinese_encoder(sd2_dir / "zh_encoder", 96)  # noqa: E731
    train_briefly(sd2_base, fresh(), tmp_path / "straight")
    with pytest.raises(Stop):
        train_briefly(sd2_base, fresh(), tmp_path / "resumed", stop_at=4)
    train_briefly(sd2_base, fresh(), tmp_path / "resumed")
    a, b = (load_file(latest_checkpoint(tmp_path / r) / "encoder" / "model.safetensors") for r in ("straight", "resumed"))
    assert a.keys() == b.keys() and any("transformation" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


VANILLA = """
import json, sys
import torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, requires_safety_checker=False)
g = torch.Generator().manual_seed(0)
out = pipe("蓝色背景上的一个大红色圆形", negative_prompt="", guidance_scale=7.5, num_inference_steps=3,
           height=32, width=32, generator=g, output_type="np").images
embeds, _ = pipe.encode_prompt("红色圆形", "cpu", 1, False)
print(json.dumps({"text_encoder": type(pipe.text_encoder).__name__, "tokenizer": type(pipe.tokenizer).__name__,
                  "prediction": pipe.scheduler.config.prediction_type, "image": list(out.shape),
                  "finite": bool(abs(out).max() < float("inf")), "context": list(embeds.shape),
                  "project_modules": sorted(m for m in sys.modules if m == "iap" or m.startswith(("iap.", "tasks", "flows")))}))
"""


@pytest.mark.e2e
def test_the_sd2_pipeline_runs_end_to_end_and_exports_a_vanilla_folder(served, sd2_dir, tmp_path):
    """`iap train --engine local` on the SD-2-shaped preset: data, cache, training, evaluation (generation
    included) and export unchanged; the export draws from a Chinese prompt with guidance in plain diffusers."""
    options = list(ENGINE_OPTIONS)
    options[options.index("--evaluate-samples") + 1] = "4"
    r = subprocess.run([IAP, "train", "--engine", "local", "--out", str(tmp_path), "--base", str(sd2_dir / "base"),
                        "--zh-encoder", str(sd2_dir / "zh_encoder"), "--manifest", str(served), *options],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (pipeline,) = (tmp_path / "pipelines").iterdir()
    v = subprocess.run([sys.executable, "-c", VANILLA, str(pipeline)], capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stderr[-3000:]
    seen = json.loads(v.stdout.strip().splitlines()[-1])
    assert seen == {"text_encoder": "AltCLIPTextModel", "tokenizer": "BertTokenizer", "prediction": "v_prediction",
                    "image": [1, 32, 32, 3], "finite": True, "context": [1, 77, 96], "project_modules": []}


UNSUPPORTED = {
    "StableDiffusion3Pipeline": ({"transformer": [], "text_encoder": [], "text_encoder_2": [], "text_encoder_3": []},
                                 "transformer with joint or DiT attention"),
    "FluxPipeline": ({"transformer": [], "text_encoder": [], "text_encoder_2": []}, "transformer"),
    "DDPMPipeline": ({"unet": [], "scheduler": []}, "no UNet conditioned on a text encoder"),
}


@pytest.mark.parametrize("kind", UNSUPPORTED)
def test_an_unsupported_base_is_one_message_naming_what_is_supported(kind, tmp_path, tiny_dir):
    components, why = UNSUPPORTED[kind]
    folder = tmp_path / kind
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": kind, **components}))
    for check in (lambda: check_pair(str(folder), str(tiny_dir / "zh_encoder")), lambda: load_base(folder)):
        with pytest.raises(IapError, match=rf"is a {kind}: .*{why}.*supports Stable Diffusion 1.x and 2.x"):
            check()


def test_a_unet_without_cross_attention_is_refused_with_what_is_supported():
    from diffusers import UNet2DConditionModel

    from iap.attention import install_capture
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32,
                                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                mid_block_type="UNetMidBlock2D")
    with pytest.raises(IapError, match="no cross-attention layers.*supports Stable Diffusion 1.x and 2.x"):
        install_capture(unet)


def test_an_encoder_that_cannot_take_a_projection_fails_before_any_download(tiny_dir, monkeypatch):
    """A BERT of another width is accepted from its config alone (it will get a projection); a T5 is refused,
    naming both widths."""
    from iap.models import hub
    fetched = []

    def fake_fetch(source, filename):
        fetched.append(filename)
        return {"hidden_size": 1024, "model_type": source.split("/")[1]}

    monkeypatch.setattr(hub, "fetch_json", fake_fetch)
    check_pair(str(tiny_dir / "base"), "org/bert")
    with pytest.raises(IapError, match=r"hidden size 1024.*cross_attention_dim is 64.*'t5'.*cannot take"):
        check_pair(str(tiny_dir / "base"), "org/t5")
    assert fetched == ["config.json", "config.json"]


# An SDXL-shaped UNet (real component class, random weights): no cross-attention in the first block, two
# transformer layers per block after it, linear projections, an 80-wide context (two encoders: 32 + 48) and
# the added time embedding of a 48-wide pooled embedding and 6 time ids.
TINY_SDXL_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                      attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=80,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=48 + 6 * 8, norm_num_groups=32)


def _sdxl_batch(n: int, vocab: int):
    from iap.objective import FrozenBatch
    g = torch.Generator().manual_seed(0)
    return FrozenBatch(zh_ids=torch.randint(1, vocab, (n, 77), generator=g), en_states=torch.randn(n, 77, 80, generator=g),
                       latents=torch.randn(n, 4, 16, 16, generator=g), noise=torch.randn(n, 4, 16, 16, generator=g),
                       timesteps=torch.randint(0, 1000, (n,), generator=g),
                       added_cond={"text_embeds": torch.randn(n, 48, generator=g),
                                   "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]]).expand(n, -1)})


def test_pivot_covers_every_sdxl_cross_attention_layer_and_equals_the_live_pass(tiny_dir):
    """On SDXL shapes (several transformer layers per block, the pooled embedding and time ids in the English
    pass): the capture processors reproduce the stock UNet, and pivot from given queries equals a real UNet pass
    with the Chinese states and the English queries injected, in loss and gradients."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET).eval().requires_grad_(False)
    base = SimpleNamespace(unet=unet, noise_scheduler=DDPMScheduler(beta_schedule="scaled_linear"))
    encoder = load_chinese_encoder(tiny_dir / "zh_encoder", 80)  # a 64-wide BERT, projected to the 80-wide context
    batch = _sdxl_batch(4, encoder.model.config.vocab_size)
    teacher = Teacher(base)
    every = {name for name, _ in unet.named_modules() if name.endswith("attn2")}
    assert set(teacher.layers) == every and len(every) == 1 * 2 + 2 * 2 + 2  # down 1 x 2, up 2 x 2, mid 2
    with pytest.raises(ValueError, match="added_cond"):
        teacher.english_pass(replace(batch, added_cond=None))
    _, _, captured = assert_pivot_equals_live(teacher, encoder, batch)

    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = unet(teacher.noisy_latents(batch), batch.timesteps, batch.en_states,
                     added_cond_kwargs=batch.added_cond).sample
    torch.testing.assert_close(captured, stock, rtol=1e-5, atol=1e-6)
