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
from tests.conftest import DOWNLOAD, FILTER

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
