"""SDXL: the English side exactly as StableDiffusionXLPipeline builds it (two towers' penultimate states, the
pooled embedding, time ids), the Chinese side as the base's towers with a Chinese vocabulary, the pooled
term, exact resume, and an end-to-end run whose export plain diffusers loads and draws from. The checks
shared with SD 1.x/2.x run on the SDXL preset in place (test_objective, test_cache)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import BertTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from iap.errors import IapError
from iap.models import load_chinese_encoder
from iap.models.xl import chinese_towers
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.training.checkpoint import latest_checkpoint
from tests.helpers import (
    ENGINE_OPTIONS,
    IAP,
    Stop,
    assert_chinese_draws_like_english,
    shapes_source,
    train_briefly,
)

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

PROMPT = "a big red circle on a blue background"


def test_the_english_side_is_what_the_sdxl_pipeline_encodes(sdxl_dir, sdxl_base):
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir / "base")
    states, _, pooled, _ = pipe.encode_prompt([PROMPT, ""], device="cpu", do_classifier_free_guidance=False)
    ours = sdxl_base.english([PROMPT, ""])
    assert torch.equal(ours[0], states) and torch.equal(ours[1], pooled)
    assert states.shape == (2, 77, 96) and pooled.shape == (2, 64)
    latents = torch.zeros(2, 4, 16, 16)
    expected = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=64)
    assert torch.equal(sdxl_base.time_ids(latents), expected.expand(2, -1))


def test_the_chinese_side_is_the_base_towers_with_a_chinese_vocabulary(sdxl_dir, sdxl_encoder):
    """Every weight but the token embeddings starts as the English towers'; the pooled embedding is read at
    the Chinese [SEP]; tower 1's unread last layer is frozen; the states are what SDXL reads."""
    towers = sdxl_encoder.model
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        english = cls.from_pretrained(sdxl_dir / "base", subfolder=name).state_dict()
        chinese = getattr(towers, name).state_dict()
        differ = {k for k in english if not torch.equal(english[k], chinese[k])}
        assert differ == {next(k for k in english if "token_embedding" in k)}
        assert chinese[next(iter(differ))].shape[0] == len(sdxl_encoder.tokenizer)
    assert not any(p.requires_grad for p in towers.text_encoder.final_layer_norm.parameters())
    ids = sdxl_encoder.tokenize(["蓝色背景上的一个大红色圆形"])
    states, pooled = sdxl_encoder(ids)
    two = towers.text_encoder_2(ids, output_hidden_states=True)
    sep = (ids[0] == sdxl_encoder.tokenizer.sep_token_id).nonzero()[0, 0]
    at_sep = towers.text_encoder_2.text_projection(two.last_hidden_state[0, sep])
    torch.testing.assert_close(pooled[0], at_sep)
    assert states.shape == (1, 77, 96) and torch.equal(states[..., 32:], two.hidden_states[-2])


def test_a_tokenizer_whose_end_token_is_id_2_is_refused(sdxl_dir, tmp_path):
    """CLIP towers read eos id 2 as 'pool at the largest id': a silently wrong pooled embedding."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]", "红"]) + "\n")
    with pytest.raises(IapError, match="end token has id 2"):
        chinese_towers(str(sdxl_dir / "base"), BertTokenizer(str(tmp_path / "vocab.txt")), "vocab-with-sep-2")


def test_the_pooled_term_and_the_empty_prompt_pairing(sdxl_base, sdxl_encoder):
    source = shapes_source(sdxl_base, sdxl_encoder, n=4)
    batch = source.batch(torch.arange(4), torch.Generator().manual_seed(0))
    teacher = Teacher(sdxl_base)
    states, pooled = sdxl_encoder(batch.zh_ids)
    attention = make_objective("pivot", teacher, pooled_weight=0)((states, pooled), batch)
    both = make_objective("pivot", teacher, pooled_weight=2.0)((states, pooled), batch)
    expected = attention + 2.0 * F.mse_loss(pooled, batch.added_cond["text_embeds"])
    torch.testing.assert_close(both, expected)
    paired = EmptyPrompt.pair(sdxl_base.english([""]), sdxl_encoder).apply(batch, [1])
    en_empty = sdxl_base.english([""])
    assert torch.equal(paired.added_cond["text_embeds"][1], en_empty[1][0])
    assert torch.equal(paired.added_cond["text_embeds"][0], batch.added_cond["text_embeds"][0])
    assert torch.equal(paired.en_states[1], en_empty[0][0])


def test_resume_through_both_towers_is_exact(sdxl_dir, sdxl_base, tmp_path):
    base = str(sdxl_dir / "base")
    fresh = lambda: load_chinese_encoder(sdxl_dir / "zh_encoder", 96, base=base)  # noqa: E731
    train_briefly(sdxl_base, fresh(), tmp_path / "straight")
    with pytest.raises(Stop):
        train_briefly(sdxl_base, fresh(), tmp_path / "resumed", stop_at=4)
    train_briefly(sdxl_base, fresh(), tmp_path / "resumed")
    a, b = (load_file(latest_checkpoint(tmp_path / r) / "encoder" / "model.safetensors") for r in ("straight", "resumed"))
    assert a.keys() == b.keys() and any(k.startswith("text_encoder_2.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(latest_checkpoint(tmp_path / "straight").parent / "step-000003" / "encoder" / "model.safetensors")
    assert not all(torch.equal(first[k], a[k]) for k in a)  # it trained


VANILLA_XL = """
import json, sys
import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline

pipe = StableDiffusionXLPipeline.from_pretrained(sys.argv[1])
images = {}
for negative in (None, ""):  # None: SDXL's zeros (force_zeros_for_empty_prompt); "": the Chinese towers on ""
    g = torch.Generator().manual_seed(0)
    images[negative] = pipe("蓝色背景上的一个大红色圆形", negative_prompt=negative, guidance_scale=7.5,
                            num_inference_steps=3, generator=g, output_type="np").images
states, _, pooled, _ = pipe.encode_prompt("红色圆形", device="cpu", do_classifier_free_guidance=False)
print(json.dumps({"towers": [type(pipe.text_encoder).__name__, type(pipe.text_encoder_2).__name__],
                  "tokenizers": [type(pipe.tokenizer).__name__, type(pipe.tokenizer_2).__name__],
                  "zeros_for_empty": pipe.config.force_zeros_for_empty_prompt, "image": list(images[None].shape),
                  "finite": all(bool(np.isfinite(v).all()) for v in images.values()),
                  "negatives_differ": bool(np.abs(images[None] - images[""]).max() > 0),
                  "context": list(states.shape), "pooled": list(pooled.shape),
                  "project_modules": sorted(m for m in sys.modules if m == "iap" or m.startswith(("iap.", "tasks", "flows")))}))
"""


def test_the_sdxl_pipeline_runs_end_to_end_and_exports_a_vanilla_xl_folder(served, sdxl_dir, tmp_path):
    """`iap train --engine local` on the SDXL-shaped preset: data, cache (pooled embedding and time ids),
    training, evaluation (generation through StableDiffusionXLPipeline) and export; plain diffusers loads the
    export and draws from a Chinese prompt with guidance, with SDXL's zero negative and with the "" one."""
    options = list(ENGINE_OPTIONS)
    options[options.index("--evaluate-samples") + 1] = "4"
    r = subprocess.run([IAP, "train", "--engine", "local", "--out", str(tmp_path), "--base", str(sdxl_dir / "base"),
                        "--zh-encoder", str(sdxl_dir / "zh_encoder"), "--manifest", str(served), "--cache-policy",
                        "store", *options], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (cache,) = (tmp_path / "cache").iterdir()
    shard = load_file(next(cache.glob("shards/*.safetensors")))
    assert shard["en_pooled"].shape[1:] == (64,) and shard["time_ids"][0].tolist() == [32, 32, 0, 0, 32, 32]
    (pipeline,) = (tmp_path / "pipelines").iterdir()
    v = subprocess.run([sys.executable, "-c", VANILLA_XL, str(pipeline)], capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stderr[-3000:]
    seen = json.loads(v.stdout.strip().splitlines()[-1])
    assert seen == {"towers": ["CLIPTextModel", "CLIPTextModelWithProjection"],
                    "tokenizers": ["BertTokenizer", "BertTokenizer"], "zeros_for_empty": True, "image": [1, 32, 32, 3],
                    "finite": True, "negatives_differ": True, "context": [1, 77, 96], "pooled": [1, 64],
                    "project_modules": []}


def test_a_transfer_on_the_sdxl_teacher_draws_held_out_chinese_prompts_like_english_ones(tmp_path):
    """`iap demo --base preset:shapes-teacher-xl`: the committed SDXL-architecture teacher, its Chinese side
    built from its own towers and trained with IAP; held-out Chinese prompts (combos never seen by the teacher
    or in IAP training) are drawn, through StableDiffusionXLPipeline, as accurately as English ones."""
    r = subprocess.run([IAP, "demo", "--engine", "local", "--base", "preset:shapes-teacher-xl", "--workdir",
                        str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert_chinese_draws_like_english(summary["metrics"], teacher_floor=0.85)
    e = summary["evaluation"]
    print({k: v for k, v in e.items() if "pooled" in k})
    assert e["heldout_pooled_mse"] < e["untrained_heldout_pooled_mse"] / 10  # the pooled term trained it
