"""Every URL argument is a URL (issue 30, finding 11): commands outside the pipeline wrote `s3://b/x` to a local
folder `./s3:/b/x` and exited 0, and a read-only command created the bucket it was pointed at. Each command
here runs against a real S3-compatible server (moto) and must leave its outputs in the bucket, none locally."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # whole pipelines, flows or launched runs: out of the inner loop

IAP = str(Path(sys.executable).parent / "iap")
TRAIN = {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2}


def iap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([IAP, *args], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def no_local_s3_folder(cwd: Path) -> None:
    assert not (cwd / "s3:").exists(), "an s3:// argument was taken for a local path"


def test_distributed_train_export_and_generate_write_to_the_bucket(s3, tiny_dir, tmp_path):
    from PIL import Image

    from iap.training.checkpoint import read_checkpoint_meta
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"train": TRAIN}))
    run, base = "s3://iap-test/runs/two", str(tiny_dir / "base")
    iap("train-worker", "--base", base, "--zh-encoder", str(tiny_dir / "zh_encoder"), "--out", run,
        "--config", str(config), "--n-train", "32", "--train-num-processes", "2", cwd=tmp_path)
    s3.invalidate_cache()
    assert s3.cat_file(f"{run}/checkpoints/latest") == b"step-000004"
    assert read_checkpoint_meta(f"{run}/checkpoints/step-000004")["step"] == 4

    pipeline = "s3://iap-test/exports/zh"
    iap("export", f"{run}/checkpoints/step-000004", pipeline, "--base", base, cwd=tmp_path)
    s3.invalidate_cache()
    assert s3.exists(f"{pipeline}/model_index.json") and s3.exists(f"{pipeline}/text_encoder/model.safetensors")

    iap("generate", "红色的圆", "蓝色的方块", "--pipeline", pipeline, "--out", "s3://iap-test/images/a.png",
        "--steps", "2", "--precision", "no", cwd=tmp_path)
    s3.invalidate_cache()
    for name in ("a.png", "a_1.png"):
        local = tmp_path / name
        s3.get_file(f"s3://iap-test/images/{name}", str(local))
        assert Image.open(local).format == "PNG"
    no_local_s3_folder(tmp_path)


def test_compare_writes_its_runs_and_table_to_the_bucket(s3, grouped_snapshot_small, tiny_dir, base, tmp_path,
                                                         monkeypatch):
    from iap.config import TrainConfig
    from iap.evaluation.config import EvalConfig
    from iap.pipeline.compare import compare
    monkeypatch.chdir(tmp_path)
    out = "s3://iap-test/compare"
    rows = compare(base, str(tiny_dir / "zh_encoder"), grouped_snapshot_small, out,
                   TrainConfig(**TRAIN), objectives=("pivot",), policies=("store",),
                   generation=EvalConfig(samples=2), log=lambda _: None)
    s3.invalidate_cache()
    assert json.loads(s3.cat_file(f"{out}/compare.json")) == rows
    assert {s3.cat_file(f"{out}/{run}/checkpoints/latest") for run in ("pivot-live", "pivot-store")} == {b"step-000004"}
    no_local_s3_folder(tmp_path)


def test_the_demo_writes_everything_to_the_bucket(s3, tmp_path, monkeypatch):
    from iap.config import TrainConfig
    from iap.pipeline.demo import run_demo
    from iap.pipeline.engines import load
    monkeypatch.chdir(tmp_path)
    workdir = "s3://iap-test/demo"
    summary = run_demo(workdir, load("local"), TrainConfig(**TRAIN), rows=200, prompts=4)
    s3.invalidate_cache()
    assert json.loads(s3.cat_file(f"{workdir}/summary.json"))["checkpoint_id"] == summary["checkpoint_id"]
    assert summary["samples_dir"] == f"{workdir}/samples"
    assert sorted(p.rsplit("/", 1)[1] for p in s3.ls(summary["samples_dir"])) == ["en.png", "prompts.json", "zh.png"]
    assert summary["pipeline_dir"].startswith(workdir)
    no_local_s3_folder(tmp_path)


def test_read_only_commands_create_no_bucket_and_no_folder(s3, tmp_path):
    for url in ("s3://typo/registry", str(tmp_path / "no-registry")):
        r = subprocess.run([IAP, "registry", "ls", "--registry", url], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "does not exist" in r.stderr, r.stderr
    s3.invalidate_cache()
    assert not s3.exists("typo") and not (tmp_path / "no-registry").exists()


def test_a_remote_run_deleted_in_the_bucket_starts_afresh(s3, base, encoder, small_source, tmp_path):
    """The local staging folder of a remote run is a cache of the bucket, never the truth: once the run is
    deleted there, training again must train and upload again, not 'resume' from the stale local copy."""
    from iap.config import TrainConfig
    from iap.objective import Teacher, make_objective
    from iap.training.loop import train
    run = "s3://iap-test/runs/again"
    cfg = TrainConfig(**TRAIN, empty_prompt_fraction=0)
    for _ in range(2):
        result = train(cfg, encoder, make_objective("pivot", Teacher(base)), small_source, run, log=lambda _: None)
        s3.invalidate_cache()
        assert s3.cat_file(f"{run}/checkpoints/latest") == b"step-000004" and result.steps == 4
        s3.rm(run, recursive=True)


def test_server_up_keeps_an_s3_output_root_a_url(tmp_path, monkeypatch):
    from iap.cli.server import local_env
    monkeypatch.delenv("IAP_MANIFEST", raising=False)
    env = local_env(4200, "s3://iap-test/prefect/")
    assert env["IAP_OUT"] == "s3://iap-test/prefect" and env["IAP_MANIFEST"] == "s3://iap-test/prefect/manifest.parquet"
    monkeypatch.chdir(tmp_path)
    assert local_env(4200, "runs")["IAP_OUT"] == str(tmp_path / "runs")
