"""Evaluation metrics, the report, and refusal of a checkpoint trained for another base model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from iap import shapes
from iap.evaluation import image_metrics as im
from iap.evaluation.config import EvalConfig
from iap.shapes.metrics import shapes_accuracy


def tiny_extractor() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    torch.manual_seed(1)
    images = torch.rand(64, 3, 32, 32)
    feature = tiny_extractor()
    same = im.fid(images, images.clone(), feature)
    shifted = im.fid(images, (images * 0.5 + 0.5), feature)
    assert abs(same) < 1e-3
    assert shifted > 100 * max(abs(same), 1e-6)


def test_kid_is_the_set_score_at_small_n_and_fid_needs_more_images_than_dimensions():
    """Issue 27, finding 9: FID of 64 images in 2048-d features is meaningless; KID is unbiased at small N."""
    torch.manual_seed(1)
    images = torch.rand(16, 3, 32, 32)
    feature = tiny_extractor()  # 8-d features
    same, shifted = im.kid(images, images.clone(), feature), im.kid(images, images * 0.5 + 0.5, feature)
    assert abs(same) < 1e-3 and shifted > 10 * max(abs(same), 1e-6)
    assert im.kid(images, images * 0.5 + 0.5, feature) == shifted  # its random subsets are seeded
    assert im.fid_is_meaningful(16, feature, images) and not im.fid_is_meaningful(8, feature, images)
    assert not im.fid_is_meaningful(64, None, images)  # Inception: 2048 dimensions


def test_shapes_check_reads_colours_from_pixels():
    samples = [shapes.Sample(c, 0, 3) for c in shapes.all_combos()[::7]]
    acc = shapes_accuracy([shapes.render(s, 64) for s in samples], [s.combo.color for s in samples],
                          [s.combo.bg for s in samples])
    assert acc["background_colour_accuracy"] == 1.0
    assert acc["shape_colour_accuracy"] >= 0.95


def test_clip_score_runs_offline_with_a_local_tiny_clip(tmp_path, tiny_dir):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(tiny_dir / "base" / "tokenizer")
    config = CLIPConfig(text_config={"vocab_size": len(tok.get_vocab()), "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                                     "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                                     "pad_token_id": tok.pad_token_id},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=tok).save_pretrained(tmp_path / "clip")
    images = im.to_tensor([shapes.render(s, 32) for s in shapes.samples(4, 0)])
    score = im.clip_score(images, [s.caption_en for s in shapes.samples(4, 0)], str(tmp_path / "clip"))
    assert 0.0 <= score <= 100.0


def test_trained_encoder_beats_untrained_and_report_renders(demo_summary, tmp_path):
    m = demo_summary["metrics"]
    assert m["heldout_loss_after"] < m["heldout_loss_before"]
    assert m["retrieval_top1_after"] > m["retrieval_top1_before"]
    assert m["retrieval_top5_after"] > m["retrieval_top5_before"]
    full = demo_summary["evaluation"]
    assert full["consistency_pixel_l1"] < full["untrained_consistency_pixel_l1"]
    report = Path(full["report"])
    text = report.read_text()
    assert report.exists() and text.count("data:image/png;base64,") >= 3 and "heldout_loss" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed: the report's HTML was checked, not its rendering")
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=900,1400", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_evaluating_against_another_base_is_refused(demo_summary, tmp_path):
    from iap.data.snapshot import open_snapshot
    from iap.errors import IapError
    from iap.evaluation.heldout import evaluate_checkpoint
    from iap.models import load_base
    from iap.presets.tiny import TinyConfig, write_tiny
    other = load_base(write_tiny(tmp_path / "other", TinyConfig(seed=5)) / "base")
    with pytest.raises(IapError, match="trained for base model"):
        evaluate_checkpoint(other, demo_summary["checkpoint"], open_snapshot(demo_summary["snapshot"]))


@pytest.mark.e2e
def test_compare_puts_objectives_and_policies_in_one_table(grouped_snapshot_small, tiny_dir, base, tmp_path):
    from iap.config import TrainConfig
    from iap.pipeline.compare import compare
    cfg = TrainConfig(steps=12, batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=12, log_every=6)
    rows = compare(base, str(tiny_dir / "zh_encoder"), grouped_snapshot_small, tmp_path, cfg,
                   policies=("store-sampled",), generation=EvalConfig(samples=2), log=lambda _: None)
    assert [(r["objective"], r["teacher"]) for r in rows] == [
        ("pivot", "live"), ("separate", "live"), ("embedding-mse", "live"), ("eps-distill", "live"),
        ("pivot", "store-sampled")]
    for r in rows:
        assert r["heldout_loss"] > 0 and 0 <= r["retrieval_top1"] <= 1 and r["consistency_pixel_l1"] >= 0
    assert (tmp_path / "compare.json").exists()


def test_a_standalone_evaluation_writes_beside_the_run_s_report(demo_summary):
    """Issue 30, finding 13: `iap evaluate` of a run's checkpoint overwrote the run's report (and the lineage
    iap-train had filled in)."""
    from iap.pipeline.engines import LocalEngine
    from iap.presets.names import SHAPES_TEACHER
    report = Path(demo_summary["evaluation"]["report"])
    before = report.read_text()
    assert "Registry decision" in before
    from iap.pipeline.request import StageConfigs
    configs = StageConfigs(evaluate=EvalConfig(samples=2, pairs=8, guidance_scale=3.0, steps=4))
    m = LocalEngine().evaluate(demo_summary["checkpoint"], demo_summary["snapshot"], str(SHAPES_TEACHER), None, "val",
                               configs)
    assert "/evaluations/eval-" in m.report and Path(m.report).exists()
    assert report.read_text() == before


def test_an_evaluation_with_image_features_reports_kid_and_no_fid_at_small_n(demo_summary):
    from iap.data.snapshot import open_snapshot
    from iap.evaluation.heldout import evaluate_checkpoint
    from iap.models import load_base
    from iap.presets.names import SHAPES_TEACHER
    m = evaluate_checkpoint(load_base(str(SHAPES_TEACHER)), demo_summary["checkpoint"],
                            open_snapshot(demo_summary["snapshot"]), feature=tiny_extractor(),
                            generation=EvalConfig(samples=4, pairs=8, steps=4, guidance_scale=3.0), report="kid-test")
    assert m.generated_prompts == 4 and "kid_zh_vs_en" in m.trained and "fid_zh_vs_en" not in m.trained
    assert "/kid-test/report.html" in m.report


def test_metrics_are_sectioned_by_whose_prompts_and_keep_one_flat_spelling():
    """Stages pass Metrics (trained / untrained / English sections); the flat names are what registries,
    trackers and artifacts store, and they read back into the same sections."""
    from iap.evaluation.metrics import Metrics
    m = Metrics(trained={"heldout_loss": 0.1, "colour_accuracy": 0.9}, untrained={"heldout_loss": 0.5},
                english={"colour_accuracy": 1.0}, mismatched_caption_loss=0.7, heldout_pairs=16, generated_prompts=4,
                report="r/report.html")
    flat = m.flat()
    assert flat == {"heldout_loss": 0.1, "colour_accuracy": 0.9, "untrained_heldout_loss": 0.5,
                    "teacher_en_colour_accuracy": 1.0, "mismatched_caption_loss": 0.7, "heldout_pairs": 16,
                    "generated_prompts": 4, "report": "r/report.html"}
    assert Metrics.from_flat(flat) == m and Metrics.model_validate_json(m.model_dump_json()) == m
    assert m.names() == ["heldout_loss", "colour_accuracy"]
    assert "generated_prompts" not in Metrics(trained={"heldout_loss": 0.1}, heldout_pairs=3).flat()
