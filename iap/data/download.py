"""Download a manifest's images with img2dataset (real HTTP) into shards, accounting for every row.

Output (local or s3://): OUT/raw-<id>/shards/*.parquet (+ *_stats.json) and OUT/raw-<id>/download.json,
written last as the completion marker. <id> hashes the manifest's content and the download config,
so the same inputs are never downloaded twice. Every input row ends as a success or as a failure
counted under one reason; downloaded + failed must equal the input rows.

img2dataset spawns worker processes and installs a SIGINT handler: call `download` from the main
thread of a program whose entry point is guarded by `if __name__ == "__main__":`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from iap.config import StageConfig, added_field, launch_field
from iap.data.manifest import PART_ROWS, ROW, Manifest, ordered, write_parts
from iap.data.manifest import fingerprint as content_fingerprint
from iap.data.sql import connect, quote
from iap.errors import IapError
from iap.system.ids import content_id
from iap.system.quiet import output_to
from iap.system.storage import filesystem, local_workdir, write_atomic

FAILURE_REASONS = ("http_error", "timeout", "corrupt_image", "too_small", "too_large", "private_address",
                   "network_error", "other")


class DownloadConfig(StageConfig):
    """img2dataset options, with safe defaults (see img2dataset's docs for each)."""

    image_size: int = Field(256, ge=8)
    resize_mode: Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = "keep_ratio"
    resize_only_if_bigger: bool = True
    min_image_size: int = Field(128, ge=0, description="originals with a shorter side fail as too_small")
    max_pixels: int = Field(64_000_000, ge=1, description="originals with more pixels fail as too_large, "
                            "read from the header before anything decodes them")
    max_bytes: int = Field(50_000_000, ge=1, description="larger files fail as too_large")
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    output_format: Literal["parquet", "webdataset"] = "parquet"
    processes_count: int = launch_field(1, ge=1)
    thread_count: int = launch_field(16, ge=1)
    number_sample_per_shard: int = Field(1000, ge=1)
    retries: int = Field(0, ge=0)
    timeout: int = Field(10, ge=1, description="seconds for a whole request (a trickling server fails as timeout)")
    refuse_private_addresses: bool = added_field(False, description="fail rows whose server is a private, "
                                                 "loopback or link-local address (e.g. cloud metadata at "
                                                 "169.254.169.254) as private_address; turn on when fetching "
                                                 "from the open web")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = launch_field(
        "multiprocessing", description="pyspark: the active SparkSession, else a local one; ray: the connected "
        "cluster (ray.init first). See infra/distributed/")
    subjob_size: int = launch_field(1000, ge=1, description="shards per distributed subjob (pyspark, ray)")
    max_shard_retry: int = launch_field(1, ge=0, description="times a failed shard is retried (pyspark, ray)")


@dataclass
class DownloadReport:
    raw_url: str  # OUT/raw-<id>
    shards_url: str
    download_id: str
    input_rows: int  # manifest rows downloaded or failed (after the manifest's skipped rows)
    downloaded: int
    failed: dict[str, int]
    failure_examples: dict[str, str] = field(default_factory=dict)
    manifest_fingerprint: str = ""
    config: dict = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)  # every shards folder holding this manifest's rows
    keys_url: str = ""  # Parquet of the manifest's keys: the snapshot reads exactly these rows
    new_rows: int = 0  # rows downloaded by this call (the rest were already downloaded)
    manifest_rows: int = 0  # rows in the manifest's files, before duplicates and unreadable lines
    skipped: dict[str, int] = field(default_factory=dict)  # the manifest's skipped rows by reason
    skipped_examples: dict[str, str] = field(default_factory=dict)
    english: dict = field(default_factory=dict)  # where missing English came from (see iap.data.english)
    cached: bool = False

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


def failure_reason(message: str | None) -> str:
    m = (message or "").lower()
    if "http error" in m:
        return "http_error"
    if "timed out" in m or "timeout" in m:
        return "timeout"
    if "too small" in m:
        return "too_small"
    if "too large" in m:
        return "too_large"
    if "private address refused" in m:
        return "private_address"
    if "decoding" in m or "cannot identify" in m or "truncated" in m:
        return "corrupt_image"
    if "urlopen error" in m or "connection" in m or "unknown url type" in m:
        return "network_error"
    return "other"


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def _count_rows(con: duckdb.DuckDBPyConnection, fs: fsspec.AbstractFileSystem, shards_urls: list[str],
                keys: str | None, input_rows: int) -> tuple[int, Counter, dict]:
    """Successes and failures by reason of the rows (with `keys`, a relation of keys: only those) in the shards;
    each reason's example is its first failure in shard order."""
    for url in shards_urls:  # img2dataset wrote them from other processes: a cached listing is stale
        fs.invalidate_cache(url)
    globs = [_join(url, "*.parquet") for url in shards_urls]
    if not all(fs.glob(g) for g in globs):
        raise IapError(f"img2dataset wrote no shard under {shards_urls}")
    where = f"WHERE iap_key IN (SELECT key FROM {keys})" if keys else ""
    groups = con.execute(f"""SELECT status, error_message, count(*),
        min(filename || ':' || lpad(CAST(file_row_number AS VARCHAR), 12, '0')) AS first
        FROM read_parquet([{', '.join(quote(g) for g in globs)}], filename = true, file_row_number = true,
                          union_by_name = true) {where}
        GROUP BY ALL ORDER BY first""").fetchall()
    ok = sum(n for status, _, n, _ in groups if status == "success")
    reasons: Counter = Counter()
    examples: dict[str, str] = {}
    for status, msg, n, _ in groups:
        if status != "success":
            reason = failure_reason(msg)
            reasons[reason] += n
            examples.setdefault(reason, msg or "")
    missing = input_rows - sum(n for *_, n, _ in groups)
    if missing:
        reasons["unaccounted"] += missing
    return ok, reasons, examples


def _watch_progress(fs, shards_url: str, total: int, on_progress, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        try:
            fs.invalidate_cache(shards_url)
            on_progress(len(fs.glob(_join(shards_url, "*_stats.json"))), total)
        except OSError:
            pass


def _run_img2dataset(input_url: str, shards_url: str, extra_cols: list[str], cfg: DownloadConfig) -> None:
    if cfg.distributor == "pyspark":  # local-mode Spark workers must run this interpreter (it has img2dataset)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from img2dataset import download as img2dataset_download

    from iap.data.fetch import FetchLimits, limited
    # its banner, tqdm bars and per-worker status lines go to a log file beside the shards
    log = local_workdir(shards_url.rsplit("/", 1)[0]) / "img2dataset.log"
    limits = FetchLimits(cfg.timeout, cfg.max_bytes, cfg.max_pixels, cfg.refuse_private_addresses)
    with limited(limits), output_to(log):
        img2dataset_download(
            url_list=input_url, input_format="parquet", url_col="url", caption_col="caption_en",
            save_additional_columns=["caption_zh", "iap_key", *extra_cols], output_folder=shards_url,
            image_size=cfg.image_size, resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
            min_image_size=cfg.min_image_size, encode_format=cfg.encode_format, output_format=cfg.output_format,
            processes_count=cfg.processes_count, thread_count=cfg.thread_count,
            number_sample_per_shard=cfg.number_sample_per_shard, retries=cfg.retries, timeout=cfg.timeout,
            distributor=cfg.distributor, subjob_size=cfg.subjob_size, max_shard_retry=cfg.max_shard_retry,
            enable_wandb=False, compute_hash="sha256", max_image_area=cfg.max_pixels,
        )


def plan_download(manifest: Manifest, out_url: str, cfg: DownloadConfig) -> tuple[str, str]:
    """(download id, OUT/raw-<id>) without downloading anything."""
    run_id = download_id(manifest.fingerprint, cfg)
    return run_id, _join(out_url, f"raw-{run_id}")


@dataclass
class DownloadPlan:
    """What a download would do: the manifest's rows, those an earlier download under OUT already holds, and
    an estimate of the bytes the others would add (from the image size and format, not from the sources)."""

    download_id: str
    raw_url: str
    rows: int
    already_downloaded: int
    to_fetch: int
    projected_bytes: int


BYTES_PER_PIXEL = {"jpg": 0.35, "webp": 0.25, "png": 1.6}  # typical photo at quality 95 / lossless, 3 channels


def dry_run(manifest: Manifest, out_url: str, cfg: DownloadConfig) -> DownloadPlan:
    """The download's plan, fetching nothing."""
    run_id, raw_url = plan_download(manifest, out_url, cfg)
    with _connection(manifest, out_url) as con:
        parts = _earlier_parts(con, filesystem(out_url), out_url, cfg)
        new = con.execute(f"SELECT count(*) FROM ({_new_rows(parts)})").fetchall()[0][0]
    per_image = cfg.image_size ** 2 * BYTES_PER_PIXEL[cfg.encode_format]
    return DownloadPlan(run_id, raw_url, manifest.num_rows, manifest.num_rows - new, new, int(new * per_image))


def download(manifest: Manifest, out_url: str, cfg: DownloadConfig | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> DownloadReport:
    """Make every kept manifest row (see load_manifest) available as downloaded-or-failed, fetching
    only rows whose key no earlier download under OUT (with the same options) has seen: a refreshed
    manifest with new rows downloads just those. The report accounts for every manifest row."""
    report = _download(manifest, out_url, cfg or DownloadConfig(), on_progress)
    report.manifest_rows, report.skipped, report.skipped_examples, report.english = (
        manifest.input_rows, manifest.skipped, manifest.examples, manifest.english)
    return report


@contextmanager
def _connection(manifest: Manifest, out_url: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB over OUT, with the manifest's rows as view `manifest`, spilling beside the manifest's parts."""
    with tempfile.TemporaryDirectory(prefix="iap-download-") as spill:
        con = connect(out_url, spill=spill)
        con.execute(f"CREATE TEMP VIEW manifest AS SELECT * FROM {manifest.relation()}")  # with {ROW}
        try:
            yield con
        finally:
            con.close()


def _download(manifest: Manifest, out_url: str, cfg: DownloadConfig,
              on_progress: Callable[[int, int], None] | None) -> DownloadReport:
    run_id = download_id(manifest.fingerprint, cfg)
    fs = filesystem(out_url)
    marker = _join(out_url, "manifests", f"{run_id}.json")
    if fs.exists(marker):
        with fs.open(marker, "r") as f:
            return DownloadReport(**{**json.load(f), "cached": True})
    with _connection(manifest, out_url) as con:
        urls = _earlier_parts(con, fs, out_url, cfg)
        new_rows = con.execute(f"SELECT count(*) FROM ({_new_rows(urls)})").fetchall()[0][0]
        if new_rows:  # all of them new: their fingerprint is the manifest's, known without a pass
            known = manifest.fingerprint if new_rows == manifest.num_rows else None
            urls.append(_download_rows(con, _new_rows(urls), new_rows, out_url, cfg, on_progress, known).shards_url)
        keys_url = _join(out_url, "manifests", f"{run_id}.keys.parquet")
        _write(ordered(con, "manifest", "key"), keys_url)
        ok, reasons, examples = _count_rows(con, fs, urls, "manifest", manifest.num_rows)
    if reasons.get("unaccounted"):
        raise IapError(f"{reasons['unaccounted']} of {manifest.num_rows} manifest rows are in no shard under "
                       f"{out_url}: some img2dataset shards failed; re-run to retry them")
    report = DownloadReport(raw_url=_join(out_url, f"raw-{run_id}"), shards_url=urls[-1], download_id=run_id,
                            input_rows=manifest.num_rows, downloaded=ok, failed=dict(reasons),
                            failure_examples=examples, manifest_fingerprint=manifest.fingerprint,
                            config=cfg.model_dump(mode="json"), parts=urls, keys_url=keys_url, new_rows=new_rows)
    write_atomic(marker, json.dumps({k: v for k, v in asdict(report).items() if k != "cached"}, indent=1).encode(), fs)
    return report


def _earlier_parts(con: duckdb.DuckDBPyConnection, fs, out_url: str, cfg: DownloadConfig) -> list[str]:
    """Shards folders of completed raw downloads under OUT, made with the same content options, that hold
    some of the manifest's keys."""
    parts = []
    for marker in sorted(fs.glob(_join(out_url, "raw-*", "download.json"))):
        with fs.open(marker, "r") as f:
            done = json.load(f)
        if _options(DownloadConfig.model_validate(done["config"])) != _options(cfg):
            continue
        shards = quote(_join(done["shards_url"], "*.parquet"))
        if con.execute(f"SELECT count(*) FROM read_parquet({shards}) WHERE iap_key IN (SELECT key FROM manifest)"
                       ).fetchall()[0][0]:
            parts.append(done["shards_url"])
    return parts


def _new_rows(parts: list[str]) -> str:
    """The manifest's rows that no part holds."""
    seen = " UNION ALL ".join(f"SELECT iap_key FROM read_parquet({quote(_join(p, '*.parquet'))})" for p in parts)
    return f"SELECT * FROM manifest WHERE key NOT IN ({seen})" if parts else "SELECT * FROM manifest"


def _write(reader: pa.RecordBatchReader, url: str) -> None:
    """The rows as one Parquet file at a URL (local or remote), streamed."""
    fs = filesystem(url)
    fs.makedirs(url.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(url, "wb") as f, pq.ParquetWriter(f, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def _options(cfg: DownloadConfig) -> str:
    """The options that change what is downloaded (not how it is parallelised)."""
    return cfg.identity()


def _download_rows(con: duckdb.DuckDBPyConnection, rows: str, n: int, out_url: str, cfg: DownloadConfig,
                   on_progress: Callable[[int, int], None] | None, fingerprint: str | None = None) -> DownloadReport:
    """Download these n rows into OUT/raw-<id>/shards (id from their content); a completed one is reused."""
    if fingerprint is None:
        _, fingerprint = content_fingerprint(con, f"(SELECT * EXCLUDE ({ROW}) FROM ({rows}))")
    run_id = download_id(fingerprint, cfg)
    raw_url = _join(out_url, f"raw-{run_id}")
    shards_url = _join(raw_url, "shards")
    fs = filesystem(raw_url)
    marker = _join(raw_url, "download.json")
    if fs.exists(marker):
        with fs.open(marker, "r") as f:
            return DownloadReport(**{**json.load(f), "cached": True})
    for stale in (shards_url, _join(raw_url, "input")):  # a killed earlier attempt: start clean
        if fs.exists(stale):  # (img2dataset would skip the shards it finds)
            fs.rm(stale, recursive=True)
    columns = [c[0] for c in con.execute(f"DESCRIBE {rows}").fetchall()]
    extra = [c for c in columns if c not in {ROW, "key", "url", "caption_zh", "caption_en"}]
    con.execute(f"CREATE OR REPLACE TEMP VIEW new_rows AS {rows}")
    input_url = _write_input(ordered(con, "new_rows", f"key AS iap_key, * EXCLUDE (key, {ROW})"), raw_url, cfg)
    stop = threading.Event()
    if on_progress:
        total = math.ceil(n / cfg.number_sample_per_shard)
        threading.Thread(target=_watch_progress, args=(fs, shards_url, total, on_progress, stop), daemon=True).start()
    try:
        _run_img2dataset(input_url, shards_url, extra, cfg)
    finally:
        stop.set()
    ok, reasons, examples = _count_rows(con, fs, [shards_url], None, n)
    report = DownloadReport(raw_url=raw_url, shards_url=shards_url, download_id=run_id,
                            input_rows=n, downloaded=ok, failed=dict(reasons),
                            failure_examples=examples, manifest_fingerprint=fingerprint,
                            config=cfg.model_dump(mode="json"))
    if reasons.get("unaccounted"):
        raise IapError(f"img2dataset lost {reasons['unaccounted']} of {n} rows under {shards_url}: "
                       "some shards failed; re-run to retry them")
    write_atomic(marker, json.dumps({k: v for k, v in asdict(report).items() if k != "cached"}, indent=1).encode(), fs)
    return report


def _write_input(rows: pa.RecordBatchReader, raw_url: str, cfg: DownloadConfig) -> str:
    """img2dataset's input: Parquet files of whole shards (it reads each input file whole), in OUT/raw-<id>/input."""
    per_file = cfg.number_sample_per_shard * max(1, PART_ROWS // cfg.number_sample_per_shard)
    input_url = _join(raw_url, "input")
    fs = filesystem(raw_url)
    with tempfile.TemporaryDirectory(prefix="iap-input-") as local:
        files = write_parts(rows, Path(local), per_file)
        fs.makedirs(input_url, exist_ok=True)
        fs.put(files, input_url + "/")
    return input_url


def download_id(fingerprint: str, cfg: DownloadConfig) -> str:
    """Manifest content + the options that change what is downloaded."""
    return content_id(f"{fingerprint}:{_options(cfg)}")
