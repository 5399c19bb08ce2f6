"""Real corpora are messy: every row is accounted for, per-row problems are never fatal, and a file
in the wrong encoding is one message (issue: Wukong-, LAION- and COCO-CN-style data)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iap.data.manifest import ManifestColumns, load_manifest
from iap.data.pipeline import run_data
from iap.errors import IapError
from tests.helpers import DOWNLOAD, FILTER

ROWS = [{"url": f"http://x/{i}.jpg", "caption_zh": f"一只红色的猫{i}", "caption_en": f"a red cat {i}"} for i in range(6)]


def test_duplicate_rows_are_counted_and_every_good_row_kept(served, tmp_path):
    good = pq.read_table(served).to_pylist()[:6]
    rows = [*good, good[0], good[3], {**good[1], "caption_en": "another caption under the same key"}]
    path = tmp_path / "dups.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report, snapshot = run_data(str(path), str(tmp_path / "out"), DOWNLOAD, FILTER.model_copy(
        update={"val_fraction": 0, "test_fraction": 0}))
    assert report.skipped == {"duplicate_row": 2, "duplicate_key": 1}
    assert report.manifest_rows == 9 and report.input_rows == 6 and snapshot.rows["total"] == 6
    funnel = {(f["stage"], f["rule"]): f for f in snapshot.funnel}
    assert funnel[("manifest", "input")]["remaining"] == 9
    assert funnel[("manifest", "duplicate_row")]["removed"] == 2
    assert funnel[("manifest", "duplicate_row")]["remaining"] == 6  # reasons in name order


def test_exact_duplicates_without_a_key_column_are_counted(tmp_path):
    path = tmp_path / "m.csv"
    lines = ["url,caption_zh,caption_en", *(f"{r['url']},{r['caption_zh']},{r['caption_en']}" for r in ROWS)]
    path.write_text("\n".join([*lines, lines[2], lines[2]]) + "\n")
    m = load_manifest(str(path))
    assert m.num_rows == 6 and m.input_rows == 8 and m.skipped == {"duplicate_row": 2}


def test_a_gbk_file_is_one_message_naming_the_encoding_and_reads_with_it(tmp_path):
    path = tmp_path / "wukong.csv"
    text = "url,caption_zh,caption_en\n" + "".join(f"{r['url']},{r['caption_zh']},{r['caption_en']}\n" for r in ROWS)
    path.write_bytes(text.encode("gbk"))
    with pytest.raises(IapError, match=r"not UTF-8 .* it reads as gbk: pass --encoding gbk") as e:
        load_manifest(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    m = load_manifest(str(path), ManifestColumns(encoding="gbk"))
    assert m.table["caption_zh"].to_pylist() == [r["caption_zh"] for r in ROWS]
    with pytest.raises(ValueError, match="unknown text encoding"):
        ManifestColumns(encoding="klingon")


def test_a_few_undecodable_lines_are_skipped_with_their_line_number(tmp_path):
    path = tmp_path / "m.csv"
    lines = [b"url,caption_zh,caption_en", *(f"{r['url']},{r['caption_zh']},{r['caption_en']}".encode() for r in ROWS)]
    lines.insert(4, "http://x/bad.jpg,红色的猫,a cat".encode("gbk"))  # line 5: a mojibake row
    path.write_bytes(b"\n".join(lines) + b"\n")
    m = load_manifest(str(path))
    assert m.num_rows == 6 and m.input_rows == 7
    assert m.skipped == {"bad_encoding": 1} and m.examples["bad_encoding"] == f"{path}:5"


def test_a_malformed_jsonl_line_is_counted_with_its_one_based_number(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    lines.insert(3, '{"url": "http://x/broken.jpg", "caption_zh": "猫"')  # line 4
    lines.insert(5, "[1, 2]")  # line 6: JSON, but not a row
    path.write_text("\n".join(lines) + "\n")
    m = load_manifest(str(path))
    assert m.num_rows == 6 and m.input_rows == 8
    assert m.skipped == {"malformed_line": 2} and m.examples["malformed_line"] == f"{path}:4"


def test_a_csv_row_with_the_wrong_number_of_fields_is_counted(tmp_path):
    path = tmp_path / "m.csv"
    lines = ["url,caption_zh,caption_en", *(f"{r['url']},{r['caption_zh']},{r['caption_en']}" for r in ROWS)]
    lines.insert(2, "http://x/short.jpg,只有中文")
    path.write_text("\n".join(lines) + "\n")
    m = load_manifest(str(path))
    assert m.num_rows == 6 and m.skipped == {"malformed_line": 1} and "short.jpg" in m.examples["malformed_line"]


def _shards(folder, captions: list[tuple[str, str]]):
    """img2dataset-shaped shards (what the filter reads) holding these (zh, en) captions."""
    import hashlib
    n = len(captions)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({
        "iap_key": [f"k{i:04d}" for i in range(n)], "url": [f"http://x/{i}.jpg" for i in range(n)],
        "caption_zh": [zh for zh, _ in captions], "caption": [en for _, en in captions],
        "jpg": [b"\xff\xd8" + bytes([i % 256]) * 8 for i in range(n)], "width": [64] * n, "height": [64] * n,
        "original_width": [512] * n, "original_height": [512] * n,
        "sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        "status": ["success"] * n, "error_message": pa.nulls(n, pa.string())}), folder / "00000.parquet")
    return str(folder)


MIX = {  # caption_zh -> the rule that removes it (None: kept) under the default FilterConfig
    "一只红色的猫坐在沙发上": None,
    "一只猫, masterpiece, best quality, 8k": None,  # a mixed prompt: Chinese with English tags
    "iPhone 14 Pro Max 手机壳": None,  # a brand name
    "2023年上海的夜景": None,
    "一隻貓在樹上睡覺": None,  # Traditional is Chinese
    "猫がソファで寝ている": "zh_kana_hangul",
    "소파 위의 고양이 猫": "zh_kana_hangul",
    "A photo of a cat on a sofa 猫": "zh_not_chinese",
    "a cat on a sofa": "zh_not_chinese",
    "Кошка на диване 猫": "zh_not_chinese",
}


def test_chinese_means_han_kana_and_hangul_are_not_and_mixed_prompts_are_kept(tmp_path):
    from iap.data.snapshot import FilterConfig, build_snapshot
    captions = [(zh, f"caption number {i}") for i, zh in enumerate(MIX)]
    cfg = FILTER.model_copy(update={"val_fraction": 0, "test_fraction": 0})
    snap = build_snapshot(_shards(tmp_path / "shards", captions), str(tmp_path / "out"), cfg)
    kept = set(pq.read_table(f"{snap.url}/{snap.shards['train'][0]}")["caption_zh"].to_pylist())
    assert kept == {zh for zh, rule in MIX.items() if rule is None}
    removed = {f["rule"]: f["removed"] for f in snap.funnel}
    assert removed["zh_kana_hangul"] == 2 and removed["zh_not_chinese"] == 3
    strict = build_snapshot(_shards(tmp_path / "s2", captions), str(tmp_path / "out"),
                            cfg.model_copy(update={"zh_latin_allowance": 0, "zh_han_ratio": 0.6}))
    assert {f["rule"]: f["removed"] for f in strict.funnel}["zh_not_chinese"] == 5  # the tags and the brand count
    assert FilterConfig().zh_convert == "none"


def test_traditional_captions_can_be_normalised_to_simplified(tmp_path):
    captions = [("一隻貓在樹上睡覺", "a cat sleeping in a tree"), ("一只猫在树上睡觉", "a cat sleeping in a tree"),
                ("臺灣的夜市", "a night market in taiwan")]
    cfg = FILTER.model_copy(update={"val_fraction": 0, "test_fraction": 0, "zh_convert": "t2s"})
    from iap.data.snapshot import build_snapshot
    snap = build_snapshot(_shards(tmp_path / "shards", captions), str(tmp_path / "out"), cfg)
    kept = pq.read_table(f"{snap.url}/{snap.shards['train'][0]}")["caption_zh"].to_pylist()
    # T and S read as one caption now; the two rows are distinct photos, so both stay (each is a pivot)
    assert sorted(kept) == sorted(["一只猫在树上睡觉", "一只猫在树上睡觉", "台湾的夜市"])
    assert {f["rule"]: f["removed"] for f in snap.funnel}["caption_repeated"] == 0
    assert snap.config["zh_convert"] == "t2s" and snap.inputs["zh_convert"]["tool"].startswith("opencc ")
    assert snap.inputs["zh_convert"]["rows_changed"] == 2  # of the kept rows
    capped = build_snapshot(_shards(tmp_path / "shards2", captions), str(tmp_path / "out"),
                            cfg.model_copy(update={"max_images_per_caption": 1}))
    assert {f["rule"]: f["removed"] for f in capped.funnel}["caption_repeated"] == 1  # T and S were one caption


def _bomb_png(path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side pixels, a few hundred KB on disk (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\0" * ((side // 8 + 1) * side), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_image_bombs_and_trickling_servers_are_bounded(served, tmp_path):
    """A 20000x20000 PNG fails from its header, never decoded; a server sending a byte every 20 ms
    fails at the whole-request timeout, not when its last byte arrives a minute later."""
    from iap.data.download import download
    from iap.data.manifest import Manifest
    from iap.shapes.synth import _Handler, serve
    from tests.helpers import free_port
    folder, port = tmp_path / "web", free_port()
    (folder / "images").mkdir(parents=True)
    _bomb_png(folder / "images" / "bomb.png")
    good = pq.read_table(served).to_pylist()[0]
    image = served.parent / "images" / good["url"].rsplit("/", 1)[1]
    (folder / "images" / image.name).write_bytes(image.read_bytes())
    base = f"http://127.0.0.1:{port}"
    rows = [{"key": "good", "url": f"{base}/images/{image.name}"}, {"key": "bomb", "url": f"{base}/images/bomb.png"},
            {"key": "trickle", "url": f"{base}/trickle/images/{image.name}"}]
    table = pa.Table.from_pylist([{**r, "caption_zh": "一只猫", "caption_en": "a cat"} for r in rows])
    server = serve(folder, port)
    try:
        report = download(Manifest.of(table), str(tmp_path / "out"), DOWNLOAD.model_copy(update={"timeout": 1}))
        sent = _Handler.sent.get(f"/trickle/images/{image.name}")
    finally:
        server.shutdown()
    assert report.downloaded == 1 and report.failed == {"too_large": 1, "timeout": 1}
    assert "400000000 pixels" in report.failure_examples["too_large"]
    assert "not decoded" in report.failure_examples["too_large"]
    assert "whole request" in report.failure_examples["timeout"]
    assert sent is not None and sent < image.stat().st_size  # the download ended long before the trickle would


S3_TRAIN_CONFIG = {
    "download": {"image_size": 32, "min_image_size": 16, "timeout": 5},
    "filter": {"split_key": "combo", "val_fraction": 0.3, "test_fraction": 0.0},
    "cache": {"policy": "recompute", "draws": 1},
    "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, "keep_checkpoints": 1,
              "log_every": 2},
    "evaluate": {"samples": 2, "steps": 2, "pairs": 8},
    "gate": {"floor": 0.0},
}


@pytest.mark.e2e
def test_iap_train_into_s3_leaves_nothing_local_and_records_urls_that_exist(s3, tmp_path):
    """`iap train --out s3://...` through the iap-train flow: every output (snapshot, cache, run, checkpoint,
    report, pipeline, registry) in the bucket, every URL the registry records exists, and nothing is written
    locally outside the cache folder (presets, staged checkpoints)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    work, cache = tmp_path / "cwd", tmp_path / "iap-cache"
    work.mkdir()
    (tmp_path / "train.json").write_text(json.dumps(S3_TRAIN_CONFIG))
    iap = str(Path(sys.executable).with_name("iap"))
    r = subprocess.run([iap, "train", "--out", "s3://iap-test/x", "--base", "preset:tiny", "--zh-encoder", "preset:tiny",
                        "--synthetic", "60", "--config", str(tmp_path / "train.json")], cwd=work, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "IAP_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list(work.iterdir())  # no 's3:' folder, nothing
    entries = [json.loads(s3.cat_file(p)) for p in s3.glob("iap-test/x/registry/entries/*.json")]
    assert len(entries) == 1
    urls = []

    def collect(value) -> None:
        if isinstance(value, str) and "://" in value:
            urls.append(value)
        elif isinstance(value, dict):
            [collect(v) for v in value.values()]
        elif isinstance(value, list):
            [collect(v) for v in value]
    collect(entries[0])
    assert {u.split("://")[0] for u in urls} == {"s3"}, urls
    assert all(s3.exists(u) for u in urls), [u for u in urls if not s3.exists(u)]
    pipeline = entries[0]["pipeline_url"]
    assert s3.exists(f"{pipeline}/model_index.json") and s3.exists(f"{pipeline}/text_encoder/model.safetensors")
    run = entries[0]["checkpoint_url"].rsplit("/checkpoints/", 1)[0]
    assert s3.exists(f"{run}/report/report.html") and s3.exists(f"{run}/loss_curve.png")
    assert s3.cat_file(f"{run}/checkpoints/latest").decode() == "step-000004"
    assert not s3.exists(f"{run}/checkpoints/step-000002")  # keep_checkpoints=1, remotely too


@pytest.mark.e2e
@pytest.mark.parametrize("endpoint, match", [
    ("closed-port", "cannot use the storage"),
    ("moto", "bucket 'no-such-bucket' does not exist"),
])
def test_unusable_storage_is_one_message(s3, served, monkeypatch, endpoint, match):
    import os
    import subprocess
    import sys

    from tests.helpers import free_port
    if endpoint == "closed-port":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    bucket = "no-such-bucket" if endpoint == "moto" else "iap-test"
    r = subprocess.run([sys.executable, "-m", "iap", "data", "--manifest", str(served), "--out",
                        f"s3://{bucket}/data"], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and match in output and len(output.splitlines()) <= 3, output
    assert "testing" not in output  # never the credentials


@pytest.mark.e2e
def test_local_engine_data_into_s3_counts_the_shards_it_wrote(s3, served, tmp_path):
    """`iap data --engine local` watches img2dataset's progress by listing the bucket; that listing must not
    hide the shards from the final count."""
    import os
    import subprocess
    import sys
    few = tmp_path / "few.parquet"
    pq.write_table(pq.read_table(served).slice(0, 6), few)
    r = subprocess.run([sys.executable, "-m", "iap", "data", "--manifest", str(few), "--out", "s3://iap-test/d",
                        "--download-image-size", "32", "--download-min-image-size", "16", "--filter-val-fraction", "0",
                        "--filter-test-fraction", "0", "--engine", "local"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    snapshots = s3.glob("iap-test/d/snapshots/*/snapshot.json")
    assert len(snapshots) == 1 and json.loads(s3.cat_file(snapshots[0]))["rows"]["total"] == 6


@pytest.mark.e2e
def test_a_killed_iap_data_leaves_no_child_process(served, tmp_path):
    """kill -9 of `iap data` mid-download: its temporary Prefect server and img2dataset workers end too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    proc = subprocess.Popen([sys.executable, "-m", "iap", "data", "--manifest", str(served),
                             "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))
    command, deadline = psutil.Process(proc.pid), time.time() + 180
    children: dict[int, psutil.Process] = {}
    while time.time() < deadline and proc.poll() is None:  # until img2dataset's spawned workers run
        for c in command.children(recursive=True):
            children.setdefault(c.pid, c)
        running = [" ".join(c.cmdline()) for c in children.values() if c.is_running()]
        if any("multiprocessing" in c for c in running) and any("iap.system.reaper" in c for c in running):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the watchdog polls twice a second: let it see the workers (not an assertion on time)
    assert proc.poll() is None, "the data command ended before its workers could be seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs([c for c in children.values() if c.is_running()], timeout=60)
    alive = [c for c in alive if c.status() != psutil.STATUS_ZOMBIE and "iap.system.reaper" not in " ".join(c.cmdline())]
    assert not alive, [" ".join(c.cmdline())[:120] for c in alive]


def test_a_chinese_only_manifest_gets_english_by_join_and_by_translation(served, tmp_path, monkeypatch):
    """Wukong-style rows (url + Chinese only): 4 get English from a companion table joined on URL, the
    rest from the tiny MarianMT preset; each row says which, the snapshot records the model, and a re-run
    reuses the cached translations."""
    from iap.data.english import EnglishConfig
    from iap.models import translator
    monkeypatch.setenv("IAP_CACHE_DIR", str(tmp_path / "cache"))
    good = pq.read_table(served).to_pylist()[:6]
    pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption_zh": r["caption_zh"]} for r in good]),
                   tmp_path / "wukong.parquet")
    pq.write_table(pa.Table.from_pylist([{"url": r["url"], "en": r["caption_en"]} for r in good[:4]]),
                   tmp_path / "translated.parquet")
    english = EnglishConfig(join=str(tmp_path / "translated.parquet"), join_caption="en", translate="preset:tiny-mt")
    cfg = FILTER.model_copy(update={"val_fraction": 0, "test_fraction": 0})
    report, snapshot = run_data(str(tmp_path / "wukong.parquet"), str(tmp_path / "out"), DOWNLOAD, cfg, english=english)
    rows = pq.read_table(f"{snapshot.url}/{snapshot.shards['train'][0]}").to_pylist()
    assert snapshot.rows["total"] == 6 and sorted(r["en_source"] for r in rows) == ["join"] * 4 + ["mt"] * 2
    by_url = {r["url"]: r for r in good}
    assert all(r["caption_en"] == by_url[r["url"]]["caption_en"] for r in rows if r["en_source"] == "join")
    assert all(r["caption_en"] for r in rows)
    recorded = snapshot.inputs["manifest"]["english"]
    assert recorded["translate"]["model"] == "preset:tiny-mt" and recorded["translate"]["rows"] == 2
    assert recorded["join"]["rows"] == 4
    assert len(list((tmp_path / "out" / "translations").rglob("*.parquet"))) == 1
    monkeypatch.setattr(translator.Translator, "translate", lambda *a, **k: pytest.fail("translated again"))
    again = run_data(str(tmp_path / "wukong.parquet"), str(tmp_path / "out"), DOWNLOAD, cfg, english=english)[1]
    assert again.id == snapshot.id


def test_rows_left_without_english_are_counted(tmp_path):
    from iap.data.english import EnglishConfig, load_triples
    pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption_zh": r["caption_zh"]} for r in ROWS]),
                   tmp_path / "zh.parquet")
    pq.write_table(pa.Table.from_pylist([{"url": r["url"], "caption_en": r["caption_en"]} for r in ROWS[:2]]),
                   tmp_path / "en.parquet")
    m = load_triples(str(tmp_path / "zh.parquet"), english=EnglishConfig(join=str(tmp_path / "en.parquet")))
    assert m.num_rows == 2 and m.skipped == {"no_english": 4} and m.table["en_source"].to_pylist() == ["join"] * 2
    with pytest.raises(IapError, match="column 'caption_en'"):
        load_manifest(str(tmp_path / "zh.parquet"))  # without an English source: one message, as before


@pytest.mark.e2e
def test_iap_evaluate_on_an_evaluation_manifest(demo_summary, served, tmp_path):
    """A COCO-CN-style set (image + zh + en) evaluated whole instead of a held-out split: downloaded into
    its own snapshot (every row in `test`, several captions of one image kept) and scored."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    (tmp_path / "eval.json").write_text(json.dumps({"download": {"image_size": 32, "min_image_size": 16, "timeout": 2},
                                                    "evaluate": {"samples": 0, "pairs": 16}}))
    iap = str(Path(sys.executable).with_name("iap"))
    from iap.presets.names import SHAPES_TEACHER
    r = subprocess.run([iap, "evaluate", demo_summary["checkpoint"], "--base", str(SHAPES_TEACHER),
                        "--manifest", str(served), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "eval.json")],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    snapshot = json.loads(next((tmp_path / "out" / "eval-data" / "snapshots").glob("*/snapshot.json")).read_text())
    assert snapshot["rows"]["test"] == snapshot["rows"]["total"] > 0 and snapshot["config"]["dedup_image"] is False
    assert "heldout_loss" in r.stdout and "retrieval_top1" in r.stdout


@pytest.mark.e2e
def test_a_user_error_inside_the_data_flow_is_one_message_without_traceback(tmp_path):
    """Every URL unreachable: the flow fails once (no retry), the console keeps Prefect's state lines but no
    traceback (nor DuckDB's exit-time leak report), and the command ends in one `error:` line, exit 2."""
    import os
    import subprocess
    import sys

    from tests.helpers import free_port
    port = free_port()  # nothing listens there
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:{port}/a.png", f"http://127.0.0.1:{port}/b.png"],
                             "caption_zh": ["一只猫", "一只狗"], "caption_en": ["a cat", "a dog"]}),
                   tmp_path / "dead.parquet")
    r = subprocess.run([sys.executable, "-m", "iap", "data", "--manifest", str(tmp_path / "dead.parquet"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ))
    output = r.stdout + r.stderr
    assert r.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "nanobind" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no manifest row was downloaded: network_error removed 2" in errors[0], output[-3000:]
    assert len(output.splitlines()) <= 12, output
