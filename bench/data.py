"""Data-stage speed, printed side by side.

1. img2dataset download throughput (images/s) from the local shapes-world server with the
   default DownloadConfig.
2. DuckDB filter throughput (rows/s) on a synthetic shard set in img2dataset's parquet schema
   (captions + small fake image bytes), next to the same rules as a plain Python/pyarrow loop.

    python bench/data.py [--rows 1000000] [--images 400] [--naive-rows 200000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from iap import shapes
from iap.data.download import DownloadConfig, download
from iap.data.manifest import load_manifest
from iap.data.script import is_latin
from iap.data.snapshot import FilterConfig, _apply_rules, _load_rows, _write_local
from iap.data.sql import connect
from iap.shapes.synth import serve, write_synth


def bench_download(n: int, folder: Path) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = write_synth(folder / "synth", n, seed=0, base_url=f"http://127.0.0.1:{port}", image_px=160)  # >= min_image_size
    server = serve(folder / "synth", port)
    try:
        rows = load_manifest(str(manifest))
        start = time.perf_counter()
        report = download(rows, str(folder / "out"), DownloadConfig())
        elapsed = time.perf_counter() - start
    finally:
        server.shutdown()
    assert report.downloaded == n, report
    return n / elapsed


def fake_shards(rows: int, folder: Path, shard_rows: int = 100_000) -> Path:
    """img2dataset-shaped parquet shards: unique captions, ~1% duplicate images, 64-byte fake JPEGs."""
    rng = np.random.default_rng(0)
    pairs = [(s.caption_zh, s.caption_en) for s in shapes.samples(len(shapes.all_combos()) * 3, 0)]
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        ids = np.arange(start, start + n)
        pick = rng.integers(0, len(pairs), n)
        image_ids = np.where(rng.random(n) < 0.01, rng.integers(0, rows, n), ids)
        table = pa.table({
            "iap_key": [f"k{i:08d}" for i in ids],
            "url": [f"http://x/{i}.jpg" for i in ids],
            "caption_zh": [f"{pairs[p][0]}第{i}号" for p, i in zip(pick, ids, strict=True)],
            "caption": [f"{pairs[p][1]} number {i}" for p, i in zip(pick, ids, strict=True)],
            "jpg": [b"\xff\xd8" + hashlib.md5(str(j).encode()).digest() * 4 for j in image_ids],
            "width": np.full(n, 64), "height": np.full(n, 64),
            "original_width": rng.integers(16, 512, n), "original_height": rng.integers(16, 512, n),
            "sha256": [hashlib.md5(str(j).encode()).hexdigest() for j in image_ids],
            "status": ["success"] * n, "error_message": pa.nulls(n, pa.string()),
        })
        pq.write_table(table, folder / f"{start // shard_rows:05d}.parquet")
    return folder


def bench_duckdb(shards: Path, out: Path, cfg: FilterConfig) -> tuple[float, float, int]:
    start = time.perf_counter()
    con = connect(str(shards))
    extras = _load_rows(con, str(shards), None, cfg)
    rows = con.execute("SELECT count(*) FROM rows").fetchone()[0]
    funnel = _apply_rules(con, cfg, rows)
    filtered = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    _write_local(con, out, cfg, extras)
    total = time.perf_counter() - start
    return rows / filtered, rows / total, funnel[-1]["remaining"]


def bench_naive(shards: Path, limit: int, cfg: FilterConfig) -> tuple[float, int]:
    """The same script rules, row by row in Python over pyarrow-read columns (no normalisation: the
    fake captions need none)."""
    start = time.perf_counter()
    zh_rule = cfg.chinese_rule()
    table = pa.concat_tables(pq.read_table(f) for f in sorted(shards.glob("*.parquet"))).slice(0, limit)
    seen_images, per_caption, kept = set(), {}, []
    for r in table.to_pylist():
        zh, en = (r["caption_zh"] or "").strip(), (r["caption"] or "").strip()
        if r["status"] != "success" or not zh or not en:
            continue
        zh_raw, en_raw = r["caption_zh"], r["caption"]
        if not cfg.zh_min_chars <= len(zh_raw) <= cfg.zh_max_chars:
            continue
        if not cfg.en_min_words <= len(en.split()) <= cfg.en_max_words:
            continue
        if cfg.zh_reject_kana_hangul and zh_rule.is_japanese_or_korean(zh_raw):
            continue
        if not zh_rule.is_chinese(zh_raw) or not is_latin(en_raw, cfg.en_latin_ratio):
            continue
        w, h = r["original_width"], r["original_height"]
        if min(w, h) < cfg.min_side or max(w, h) > cfg.max_aspect * min(w, h):
            continue
        if r["sha256"] in seen_images or per_caption.get(zh, 0) >= cfg.max_images_per_caption:
            continue
        seen_images.add(r["sha256"])
        per_caption[zh] = per_caption.get(zh, 0) + 1
        bucket = int.from_bytes(hashlib.md5(r["iap_key"].encode()).digest()[8:], "little") % 1_000_000 / 1e6
        kept.append((r["iap_key"], "test" if bucket < 0.05 else "val" if bucket < 0.1 else "train"))
    return table.num_rows / (time.perf_counter() - start), len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--naive-rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows and 20 images (seconds: the test suite)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.images, args.naive_rows = 20_000, 20, 5_000
    cfg = FilterConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images_per_s = bench_download(args.images, tmp / "dl")
        shards = fake_shards(args.rows, tmp / "shards")
        filter_rate, total_rate, kept = bench_duckdb(shards, tmp / "snap", cfg)
        naive_rate, naive_kept = bench_naive(shards, args.naive_rows, cfg)
    print(f"\nimg2dataset download, {args.images} shapes-world images from 127.0.0.1, default DownloadConfig:"
          f" {images_per_s:.0f} images/s")
    print(f"\nfilter of {args.rows:,} rows ({kept:,} kept)          rows/s      vs naive")
    print(f"  DuckDB rules + split                 {filter_rate:12,.0f}   {filter_rate / naive_rate:6.1f}x")
    print(f"  DuckDB incl. writing the snapshot    {total_rate:12,.0f}   {total_rate / naive_rate:6.1f}x")
    print(f"  naive Python loop ({args.naive_rows:,} rows, {naive_kept:,} kept) {naive_rate:9,.0f}     1.0x")


if __name__ == "__main__":
    main()
