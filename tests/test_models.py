import json
import subprocess
import sys

import pytest

from iap.errors import IapError
from iap.models import load_base, load_chinese_encoder
from iap.models.base import weights_fingerprint
from iap.presets.tiny import write_tiny


def test_tiny_preset_is_deterministic(tiny_dir, tmp_path):
    again = write_tiny(tmp_path / "again")
    assert weights_fingerprint(str(again / "base")) == weights_fingerprint(str(tiny_dir / "base"))
    assert weights_fingerprint(str(again / "zh_encoder")) == weights_fingerprint(str(tiny_dir / "zh_encoder"))


def test_frozen_base_and_lengths(base, encoder):
    for part in (base.unet, base.vae, base.text_encoder):
        assert not part.training and not any(p.requires_grad for p in part.parameters())
    assert base.max_length == encoder.max_length == 77
    assert encoder.tokenize(["蓝色背景上的一个大红色圆形"]).shape == (1, 77)
    assert "[UNK]" not in encoder.tokenizer.tokenize("一张白色背景上的小黑色菱形的照片")


def test_missing_base_folder_is_one_clear_error(tmp_path):
    with pytest.raises(IapError, match="does not exist"):
        load_base(tmp_path / "nope")


def test_an_encoder_of_another_width_gets_a_projection_to_the_unet(tiny_dir):
    """SD 1.5 attends over 768; a 64-wide BERT (as a 1024-wide RoBERTa-large) is projected to it."""
    encoder = load_chinese_encoder(tiny_dir / "zh_encoder", cross_attention_dim=768)
    assert encoder.hidden_size == 768 and encoder(encoder.tokenize(["红色圆形"])).shape == (1, 77, 768)


@pytest.mark.e2e
def test_cli_errors_are_one_message(tiny_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "iap", "train", "--base", str(tmp_path / "nope"),
                        "--zh-encoder", str(tiny_dir / "zh_encoder"), "--out", str(tmp_path / "r"), "--synthetic", "10"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_bad_config_file_names_file_and_field(tmp_path):
    """One reader for every --config file (the stage commands' and the launched worker's)."""
    from iap.cli.options import build_configs
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"train": {"steps": -3}}))
    with pytest.raises(IapError, match=r"train.json: field 'train.steps'"):
        build_configs(("train",), path, {})
    path.write_text("{not json")
    with pytest.raises(IapError, match="train.json"):
        build_configs(("train",), path, {})


def test_a_hub_fingerprint_names_the_pinned_revision(monkeypatch):
    from iap.models import base as base_module
    from iap.models import hub

    class Info:
        sha = "0123abcd" * 5

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda self, repo: Info())
    hub.revision.cache_clear()
    try:
        assert base_module.weights_fingerprint("someorg/sd-base") == f"hub:someorg/sd-base@{Info.sha}"
    finally:
        hub.revision.cache_clear()


def test_a_legacy_bin_encoder_loads_with_weights_only(tiny_dir, tmp_path):
    """hfl/chinese-roberta-wwm-ext ships pytorch_model.bin only: it loads (tensors only), and a .bin holding
    an arbitrary pickled object is refused."""
    import shutil

    import torch
    from transformers import AutoModel
    folder = tmp_path / "bin-only"
    model = AutoModel.from_pretrained(tiny_dir / "zh_encoder")
    shutil.copytree(tiny_dir / "zh_encoder", folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_chinese_encoder(folder, cross_attention_dim=64)
    assert torch.equal(loaded.model.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    torch.save({"evil": Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(IapError, match="could not load Chinese encoder"):
        load_chinese_encoder(folder, cross_attention_dim=64)


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))
