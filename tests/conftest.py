"""Shared, expensive fixtures are session-scoped: the tiny preset and one demo run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

from iap.data import shapes  # noqa: E402
from iap.models import load_base, load_chinese_encoder  # noqa: E402
from iap.models.tiny import write_tiny  # noqa: E402
from iap.source import build_in_memory_source, image_size  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def base(tiny_dir):
    return load_base(tiny_dir / "base")


@pytest.fixture
def encoder(tiny_dir, base):
    torch.manual_seed(0)
    return load_chinese_encoder(tiny_dir / "zh_encoder", base.cross_attention_dim, base.max_length)


@pytest.fixture
def small_source(base, encoder):
    samples = shapes.samples(16, seed=3)
    size = image_size(base)
    return build_in_memory_source(base, encoder, [shapes.render(s, size) for s in samples],
                                  [s.caption_en for s in samples], [s.caption_zh for s in samples])


@pytest.fixture(scope="session")
def demo_summary(tmp_path_factory):
    """One demo run with the default settings, shared by every test that needs a trained encoder
    (about 100 s on 2 cores)."""
    from iap.demo import run_demo
    workdir = tmp_path_factory.mktemp("demo")
    summary = run_demo(workdir, log=lambda _: None)
    summary["workdir"] = str(workdir)
    return summary
