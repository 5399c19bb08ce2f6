"""The embedded default, end to end: training works, the export is a plain diffusers pipeline."""

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from iap.data.snapshot import funnel_table
from iap.errors import IapError
from iap.models.generate import generate, load_pipeline
from tests.helpers import assert_chinese_draws_like_english

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop


def test_pivot_training_transfers_to_held_out_combos(demo_summary):
    m = demo_summary["metrics"]
    assert m["heldout_loss_after"] < m["mismatched_caption_loss"] / 10
    assert m["heldout_loss_after"] < m["heldout_loss_before"] / 100
    # the shapes teacher encodes a combo's three caption templates alike (paraphrases), so the exact
    # paired caption is one of ~3 near-equal candidates: top-5 must be near perfect, top-1 well above chance
    assert m["retrieval_top5_after"] >= 0.95 and m["retrieval_top5_before"] < 0.2
    assert m["retrieval_top1_after"] >= 0.3 and m["retrieval_top1_before"] < 0.1


def test_chinese_prompts_draw_held_out_combos_like_english_ones(demo_summary):
    """Images from held-out Chinese prompts (combos never seen in IAP training), classified by pixel
    statistics: as accurate as the teacher's English ones; the untrained encoder near chance (1/56)."""
    m = demo_summary["metrics"]
    assert_chinese_draws_like_english(m)
    assert m["shape_class_accuracy_zh_after"] > m["shape_class_accuracy_zh_before"]
    report = Path(demo_summary["evaluation"]["report"]).read_text()
    assert "Chinese prompt, trained" in report and f"{m['colour_accuracy_zh_after']:.1%}" in report


def test_the_report_shows_every_held_out_prompt_every_definition_and_the_lineage(demo_summary):
    """A person reads report.html: every drawn held-out prompt with its images in one column order, every metric
    with its definition, the loss curves, and the lineage down to the registry decision."""
    import html

    from iap.evaluation.metrics import Metrics
    from iap.evaluation.report import COLUMNS, definitions
    evaluation = demo_summary["evaluation"]
    page = Path(evaluation["report"]).read_text()
    folder = Path(evaluation["report"]).parent
    prompts = sorted(folder.glob("prompt[0-9][0-9][0-9]_zh.png"))
    assert len(prompts) == evaluation["generated_prompts"] == demo_summary["metrics"]["generated_prompts"]
    assert page.count("<tr><td>") >= len(prompts)
    for i in range(len(prompts)):
        assert f"<tr><td>{i + 1}. " in page
    labels = [label for _, _, label in COLUMNS]
    for table in page.split("<table")[1:3]:  # metrics, then prompts: the same column order
        assert [table.index(label) for label in labels] == sorted(table.index(label) for label in labels)
    metrics = Metrics.from_flat(evaluation)
    for name in [*metrics.names(), "mismatched_caption_loss", "heldout_pairs", "generated_prompts"]:
        assert name in definitions(), name
        assert html.escape(definitions()[name]) in page
    assert "Loss curves" in page and "held-out loss" in page
    assert "Lineage" in page and "Registry decision: <b>promoted" in page
    for stage in demo_summary["lineage"]:
        assert f"<td>{stage['stage']}</td>" in page
    assert "zh_kana_hangul" in page  # the funnel


def test_summary_file(demo_summary):
    summary = json.loads((Path(demo_summary["workdir"]) / "summary.json").read_text())
    for key in ("pipeline_dir", "checkpoint", "metrics"):
        assert key in summary
    assert (Path(summary["samples_dir"]) / "zh.png").exists()
    assert summary["registry_status"] == "promoted"
    assert Path(summary["loss_curve"]).exists()
    funnel = summary["funnel"]  # the data funnel, manifest lines first, and the run that made all of it
    assert funnel[0]["rule"] == "input" and funnel[0]["remaining"] == 1600
    assert all(a["remaining"] - b["removed"] == b["remaining"] for a, b in zip(funnel, funnel[1:], strict=False))
    assert uuid.UUID(summary["flow_run_id"]) and summary["flow_runs"]["iap-train"] == summary["flow_run_id"]
    assert [s["stage"] for s in summary["lineage"]] == ["manifest", "download", "snapshot", "cache", "run",
                                                         "checkpoint", "evaluation", "pipeline", "registry entry"]


def test_the_train_run_carries_funnel_metrics_loss_curve_and_lineage(demo_summary):
    """What a user opens in the Prefect UI: the iap-train run itself holds the four artifacts; the loss curve is
    an image the UI can render (inline PNG, not a file:// link); the lineage names every stage and its run."""
    import base64
    import io
    import re

    from PIL import Image
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(demo_summary["flow_run_id"])])))
    artifacts = {a.key: a for a in found}
    assert {"iap-funnel", "iap-metrics", "iap-loss-curve", "iap-lineage"} <= set(artifacts), set(artifacts)
    curve = artifacts["iap-loss-curve"].data
    assert "file://" not in curve.split("PNG:")[0]
    png = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", curve)
    assert png, curve[:300]
    image = Image.open(io.BytesIO(base64.b64decode(png.group(1))))
    assert image.format == "PNG" and image.width >= 200
    lineage = artifacts["iap-lineage"].data
    for stage in demo_summary["lineage"]:
        assert f"| {stage['stage']} |" in lineage
    for run in demo_summary["flow_runs"].values():
        assert run is None or run in lineage
    funnel = json.loads(artifacts["iap-funnel"].data)
    assert funnel == funnel_table(demo_summary["funnel"])  # examples of removed rows in one cell per rule


VANILLA = """
import sys, numpy as np
from diffusers import StableDiffusionPipeline

assert not any(m == "iap" or m.startswith("iap.") for m in sys.modules)
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, requires_safety_checker=False)
img = pipe("蓝色背景上的一个大红色圆形", num_inference_steps=4, output_type="np").images[0]
assert img.shape[-1] == 3 and np.isfinite(img).all()
print(type(pipe.text_encoder).__name__, pipe.tokenizer.model_max_length)
"""


def test_export_loads_in_vanilla_diffusers(demo_summary, tmp_path):
    r = subprocess.run([sys.executable, "-c", VANILLA, demo_summary["pipeline_dir"]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["BertModel", "32"]  # padded to the English side's length
    assert (Path(demo_summary["pipeline_dir"]) / "README.md").exists()


def test_export_refuses_another_base(demo_summary, tmp_path):
    from iap.presets.tiny import TinyConfig, write_tiny
    from iap.release.export import export_pipeline
    other = write_tiny(tmp_path / "other", TinyConfig(seed=1))
    with pytest.raises(IapError, match="trained for base model"):
        export_pipeline(demo_summary["checkpoint"], str(other / "base"), tmp_path / "out")


def test_generate_rejects_empty_prompt_list(demo_summary):
    with pytest.raises(IapError, match="no prompt"):
        generate(load_pipeline(demo_summary["pipeline_dir"]), ["", "  "])


def test_export_copies_the_frozen_base_file_for_file(demo_summary):
    """UNet, VAE and scheduler are the base's files, never re-saved (no second base in memory, no lossy
    re-cast on a bf16 run); only the text encoder and tokenizer are new."""
    from iap.presets.names import SHAPES_TEACHER
    out = Path(demo_summary["pipeline_dir"])
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "unet/config.json", "scheduler/scheduler_config.json"):
        assert (out / part).read_bytes() == (SHAPES_TEACHER / part).read_bytes(), part
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["safety_checker"] == [None, None]


NOISE = ("LOAD REPORT", "bandwidth", "Downloading starting now", "Sharding file", "it/s]", "images per sec",
         "FutureWarning", "Loading weights", "Traceback")


def test_the_demo_says_only_what_iap_says(demo_summary):
    """No third-party banner, progress bar or load-report table in the demo's terminal output; img2dataset's
    own lines are in its log file beside the shards."""
    console = demo_summary["console"]
    assert console.strip(), "nothing captured"
    found = [n for n in NOISE if n in console]
    assert not found, (found, console[-3000:])
    for stage in demo_summary["lineage"]:  # and where every output went
        assert f"  {stage['stage']:15} {stage['value']}" in console, stage
    logs = list(Path(demo_summary["workdir"]).glob("data/raw-*/img2dataset.log"))
    assert logs and "Downloading starting now" in logs[0].read_text()


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed (.ci/run installs chromium and fonts-noto-cjk)")
def test_the_report_renders_in_headless_chromium(demo_summary, tmp_path):
    """The page as a browser draws it: thumbnails decoded (the shapes' saturated colours are on screen) and a
    CJK font present for the Chinese prompts."""
    import numpy as np
    from PIL import Image
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2400", f"--screenshot={shot}",
                    Path(demo_summary["evaluation"]["report"]).as_uri()], capture_output=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (2400, 1200, 3)
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 120
    assert saturated.mean() > 0.02, saturated.mean()
    fonts = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout
    assert fonts.strip(), "no font with Chinese glyphs: the prompts would render as boxes"


def test_the_export_card_is_hub_ready_and_push_sends_that_folder(demo_summary, tmp_path, monkeypatch):
    """Issue 27, finding 5: the card lacked base_model, license and the evaluation results, and nothing
    could publish an export. The Hub cannot be reached here: its two API calls are replaced, and the test
    checks what they would have been sent."""
    from huggingface_hub import HfApi, ModelCard

    from iap.release.export import push_to_hub
    folder = Path(demo_summary["pipeline_dir"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.language == ["zh"] and card.data.pipeline_tag == "text-to-image"
    assert card.data.library_name == "diffusers" and "iap" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["retrieval_top5"] == pytest.approx(demo_summary["evaluation"]["retrieval_top5"])
    from iap.presets.names import SHAPES_TEACHER
    from iap.release.export import base_license
    assert card.data.license == base_license(SHAPES_TEACHER)  # the base's own, or none (and the text says so)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload(self, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()
    monkeypatch.setattr(HfApi, "upload_folder", upload)
    assert push_to_hub(folder, "someone/iap-zh") == "https://huggingface.co/someone/iap-zh/commit/1"
    assert calls[0][:2] == ("create", "someone/iap-zh") and calls[0][2]["private"] is True
    assert calls[1][0] == "upload" and {"README.md", "model_index.json", "text_encoder", "unet"} <= set(calls[1][2])


def test_the_pipeline_publishes_only_a_promoted_checkpoint(demo_summary, monkeypatch):
    """iap-train's push_to_hub (the deployment parameter): the export goes to the Hub once the registry
    promotes it, and a candidate stays home, said so."""
    from huggingface_hub import HfApi

    from iap.release.export import publish
    sent = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, repo_id, folder_path, **kw: sent.append(repo_id)
                        or type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/2"})())
    folder = demo_summary["pipeline_dir"]
    assert publish(folder, "someone/zh", "candidate").startswith("not pushed to someone/zh") and sent == []
    assert publish(folder, "someone/zh", "promoted") == "pushed to https://huggingface.co/someone/zh/commit/2"
    assert sent == ["someone/zh"]
