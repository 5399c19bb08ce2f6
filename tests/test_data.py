"""The data stage against real servers: img2dataset over local HTTP, and S3 via moto's server."""

from __future__ import annotations

import sys

import duckdb
import pyarrow.parquet as pq
import pytest

from iap.data.manifest import read_manifest
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig, build_snapshot, open_snapshot
from iap.errors import IapError
from iap.shapes.synth import BROKEN_KINDS
from tests.helpers import BROKEN, DOWNLOAD, FILTER, N_GOOD, kill_at_marker


def _rows(snapshot, splits=("train", "val", "test")) -> list[dict]:
    files = [f for s in splits for f in snapshot.split_urls(s)]
    if not files:
        return []
    return duckdb.connect().execute(f"SELECT * FROM read_parquet({files})").to_arrow_table().to_pylist()


def test_every_row_is_accounted_for_by_reason(local_run):
    _, report, snapshot = local_run
    assert report.input_rows == N_GOOD + BROKEN * len(BROKEN_KINDS)
    assert report.downloaded + report.failed_total == report.input_rows
    expected = {kind.split(": ")[1]: BROKEN for kind in BROKEN_KINDS.values()}
    download_reasons = {k: v for k, v in expected.items() if k in report.failed}
    assert report.failed == download_reasons == {"http_error": 2, "corrupt_image": 2, "too_small": 2, "timeout": 2}
    removed = {f["rule"]: f["removed"] for f in snapshot.funnel if f["stage"] == "filter"}
    for rule in ("missing_caption", "zh_not_chinese", "duplicate_image", "boilerplate"):
        assert removed[rule] == BROKEN, rule
    assert sum(removed.values()) == BROKEN * 4
    assert snapshot.rows["total"] == N_GOOD == sum(snapshot.rows[s] for s in ("train", "val", "test"))


def test_good_rows_reach_the_snapshot_intact(local_run, served):
    _, _, snapshot = local_run
    manifest = pq.read_table(served).to_pylist()
    good = {(r["key"], r["caption_zh"], r["caption_en"], r["combo"]) for r in manifest if not r["broken"]}
    got = _rows(snapshot)
    assert {(r["key"], r["caption_zh"], r["caption_en"], r["combo"]) for r in got} == good
    assert all(r["image"][:2] == b"\xff\xd8" and r["width"] == 32 for r in got)  # re-encoded JPEG, resized


def test_rerun_is_cached_and_a_changed_rule_gives_a_new_id(local_run, served):
    out, report, snapshot = local_run
    report2, snapshot2 = run_data(str(served), str(out), DOWNLOAD, FILTER)
    assert report2.cached and snapshot2.cached and snapshot2.id == snapshot.id
    changed = build_snapshot(report.shards_url, str(out), FILTER.model_copy(update={"zh_min_chars": 15}))
    assert changed.id != snapshot.id and not changed.cached
    assert changed.rows["total"] < snapshot.rows["total"]


def test_split_can_group_by_a_column(local_run):
    """split_key=combo keeps every combination in one split (held-out combos never seen in training)."""
    out, report, _ = local_run
    by_combo = build_snapshot(report.shards_url, str(out), FILTER.model_copy(
        update={"split_key": "combo", "val_fraction": 0.3, "test_fraction": 0.3}))
    combos = {s: {r["combo"] for r in _rows(by_combo, (s,))} for s in ("train", "val", "test")}
    assert all(combos.values())
    assert not (combos["train"] & combos["val"]) and not (combos["train"] & combos["test"])
    assert not (combos["val"] & combos["test"])


def test_where_predicate_is_validated_and_read_only(local_run):
    out, report, _ = local_run
    with pytest.raises(ValueError, match="single predicate"):
        FilterConfig(where="true; DROP TABLE rows")
    with pytest.raises(IapError, match="where"):
        build_snapshot(report.shards_url, str(out), FILTER.model_copy(
            update={"where": "key IN (SELECT column0 FROM read_csv('/etc/hostname'))"}))
    small = build_snapshot(report.shards_url, str(out), FILTER.model_copy(update={"where": "caption_en LIKE '%circle%'"}))
    assert 0 < small.rows["total"] < N_GOOD
    assert all("circle" in r["caption_en"] for r in _rows(small))


KILL_SCRIPT = """
import sys, time
import iap.data.snapshot as snap
original = snap._write_local
def slow(*a, **k):
    shards = original(*a, **k)
    print("WRITTEN", flush=True)
    time.sleep(60)
    return shards
snap._write_local = slow
if __name__ == "__main__":
    snap.build_snapshot(sys.argv[1], sys.argv[2], snap.FilterConfig(shard_rows=20, zh_max_chars=200))
"""


def test_killed_filter_leaves_no_visible_snapshot(local_run, tmp_path):
    _, report, _ = local_run
    out = tmp_path / "out"
    kill_at_marker([sys.executable, "-c", KILL_SCRIPT, report.shards_url, str(out)], "WRITTEN")
    assert not list(out.rglob("snapshot.json"))
    snapshot = build_snapshot(report.shards_url, str(out), FilterConfig(shard_rows=20, zh_max_chars=200))
    assert not snapshot.cached and open_snapshot(snapshot.url).rows["total"] == N_GOOD


@pytest.mark.parametrize("content, fmt, match", [
    ("url,caption_en\nhttp://x/a.jpg,a cat\n", "csv", "column 'caption_zh'"),
    ('url,caption_zh,caption_en\n"http://x/a.jpg,猫,a cat\n', "csv", "no rows \\(1 unreadable: malformed_line"),
    (b"PAR1 not really parquet", "parquet", "cannot read it as parquet"),
    ("url,caption_zh,caption_en\n", "csv", "no rows"),
])
def test_malformed_manifest_is_one_clear_message(tmp_path, content, fmt, match):
    path = tmp_path / f"manifest.{fmt}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(IapError, match=match) as e:
        read_manifest(str(path))
    assert str(path) in str(e.value)


def test_manifest_formats_and_column_names(tmp_path):
    from iap.data.manifest import ManifestColumns
    (tmp_path / "a.tsv").write_text("image\tzh\ten\textra\nhttp://x/1.jpg\t一只猫\ta cat\t7\n")
    (tmp_path / "b.jsonl").write_text('{"image": "http://x/2.jpg", "zh": "一只狗", "en": "a dog", "extra": 8}\n')
    cols = ManifestColumns(url="image", caption_zh="zh", caption_en="en")
    for name in ("a.tsv", "b.jsonl"):
        t = read_manifest(str(tmp_path / name), cols)
        assert t.column_names[:4] == ["key", "url", "caption_zh", "caption_en"] and "extra" in t.column_names


@pytest.mark.e2e
def test_end_to_end_on_s3(s3, served):
    s3.put(str(served), "iap-test/in/manifest.parquet")
    report, snapshot = run_data("s3://iap-test/in/manifest.parquet", "s3://iap-test/data", DOWNLOAD, FILTER)
    assert snapshot.url.startswith("s3://iap-test/data/snapshots/")
    assert report.downloaded + report.failed_total == report.input_rows
    assert snapshot.rows["total"] == N_GOOD
    assert s3.exists(f"{snapshot.url}/snapshot.json")
    reopened = open_snapshot(snapshot.url)
    assert reopened.id == snapshot.id and reopened.shards == snapshot.shards
    again = run_data("s3://iap-test/in/manifest.parquet", "s3://iap-test/data", DOWNLOAD, FILTER)[1]
    assert again.cached and again.id == snapshot.id


@pytest.mark.e2e
def test_refresh_downloads_only_new_manifest_rows(tmp_path):
    from iap.shapes.synth import serve, write_synth
    from tests.helpers import free_port
    folder, port, out = tmp_path / "synth", free_port(), tmp_path / "out"
    server = serve(folder.mkdir() or folder, port)
    try:
        first = write_synth(folder, n=30, seed=1, base_url=f"http://127.0.0.1:{port}")
        first.rename(folder / "day1.parquet")
        report1, snap1 = run_data(str(folder / "day1.parquet"), str(out), DOWNLOAD, FILTER)
        grown = write_synth(folder, n=40, seed=1, base_url=f"http://127.0.0.1:{port}")  # the same 30 + 10 new
        report2, snap2 = run_data(str(grown), str(out), DOWNLOAD, FILTER)
        again = run_data(str(grown), str(out), DOWNLOAD, FILTER)
    finally:
        server.shutdown()
    assert report1.new_rows == 30 and snap1.rows["total"] == 30
    assert report2.new_rows == 10 and report2.input_rows == 40 and report2.downloaded == 40
    assert len(report2.parts) == 2 and snap2.rows["total"] == 40 and snap2.id != snap1.id
    assert again[0].cached and again[1].cached and again[1].id == snap2.id


def test_zero_surviving_rows_is_one_message_and_no_snapshot(local_run, tmp_path):
    from iap.errors import IapError
    _, report, _ = local_run
    with pytest.raises(IapError, match=r"0 of 48 downloaded rows survived the filter: image_too_small removed 42 "
                                       r"\(--filter-min-side\); .*boilerplate removed 2 \(--filter-boilerplate"):
        build_snapshot(report.shards_url, str(tmp_path), FILTER.model_copy(update={"min_side": 10_000}))
    assert not (tmp_path / "snapshots").exists() or not any((tmp_path / "snapshots").iterdir())


def test_a_snapshot_written_with_a_relative_out_opens_from_anywhere(local_run, tmp_path, monkeypatch):
    _, report, _ = local_run
    monkeypatch.chdir(tmp_path)
    snapshot = build_snapshot(report.shards_url, "rel-out", FILTER)
    assert snapshot.url == str(tmp_path / "rel-out" / "snapshots" / snapshot.id)
    monkeypatch.chdir("/")
    assert open_snapshot(snapshot.url).rows == snapshot.rows
