"""Read a bilingual manifest (Parquet, CSV, TSV, JSONL; local path, glob or s3://) into one table.

Output columns: key, url, caption_zh, caption_en, then every extra column, carried through.
Per-row problems are counted, never fatal: a line that is not valid text in the file's encoding, a
malformed JSONL line or CSV row, and duplicates (an exact repeat of an earlier row, or another row
under an earlier row's key) are skipped under their own reason, with a 1-based line number as example.
A missing column, a file in another encoding, an unreadable file or an empty manifest is one
IapError naming the file (and the column, or the encoding to pass).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from iap.config import StageConfig
from iap.errors import IapError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# Bounds on what a manifest may make the worker parse: a caption row has a handful of columns and a few kB.
# A file past them (100k columns, a gigabyte on one line: a wrong delimiter, or hostile) is one message.
MAX_COLUMNS = 1000
MAX_LINE_BYTES = 16 << 20
GUESSES = ("gbk", "gb18030", "big5", "shift_jis", "euc-kr")  # tried, in order, on a file that is not UTF-8


class ManifestColumns(StageConfig):
    """Which manifest columns hold what, and how its text files are read."""

    url: str = "url"
    caption_zh: str = "caption_zh"
    caption_en: str = "caption_en"
    key: str | None = Field("key", description="optional; a hash of url+captions when the column is absent")
    url_schemes: list[str] = Field(["http", "https"], description="URL schemes a row may name; others are "
                                   "skipped as bad_url. Adding file, data or ftp lets whoever writes a manifest "
                                   "read this machine's files into a snapshot")
    encoding: str = Field("utf-8", description="text encoding of CSV/TSV/JSONL files (e.g. gbk, gb18030, big5)")

    @field_validator("encoding")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError as e:
            raise ValueError(f"unknown text encoding '{v}'") from e


@dataclass
class Manifest:
    """The manifest's rows, one per key, and the account of every row that was not kept."""

    table: pa.Table
    input_rows: int  # rows (text lines) in the files, before any was skipped
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    examples: dict[str, str] = field(default_factory=dict)  # reason -> where its first row is
    english: dict = field(default_factory=dict)  # where missing English came from (join, translation model)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


class _Skips:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, n: int, example: str) -> None:
        if n:
            self.counts[reason] += n
            self.examples.setdefault(reason, example)


def _files(path: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, _, paths = fsspec.get_fs_token_paths(path)
    files = sorted(p for p in paths if not fs.isdir(p)) if paths else []
    if not files:
        raise IapError(f"manifest {path}: no such file")
    return fs, files


def _decode(raw: bytes, path: str, encoding: str, skips: _Skips) -> bytes:
    """The file as UTF-8. Lines that are not valid UTF-8 are skipped (a few mojibake rows are normal in
    scraped corpora); a file where most non-ASCII lines are not is in another encoding: one message."""
    if encoding != "utf-8":
        try:
            return raw.decode(encoding).encode()
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise IapError(f"manifest {path}: line {line} is not valid {encoding}; pass the file's encoding "
                           "with --encoding") from e
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if _decodes(raw, "utf-8"):
        return raw
    lines = raw.split(b"\n")
    bad = [i for i, line in enumerate(lines, 1) if not _decodes(line, "utf-8")]
    non_ascii = sum(1 for line in lines if not line.isascii())
    if len(bad) * 2 >= non_ascii:
        found = next((enc for enc in GUESSES if _decodes(raw, enc)), None)
        hint = f"it reads as {found}: pass --encoding {found}" if found else "pass its encoding with --encoding"
        raise IapError(f"manifest {path}: not UTF-8 ({len(bad)} of {non_ascii} non-ASCII lines are not, "
                       f"first at line {bad[0]}); {hint}")
    skips.add("bad_encoding", len(bad), f"{path}:{bad[0]}")
    bad_set = set(bad)
    return b"\n".join(line for i, line in enumerate(lines, 1) if i not in bad_set)


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _longest_line(data: bytes, path: str) -> int:
    """The longest line's length in bytes; one message, naming the line, when it is over MAX_LINE_BYTES."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    bounds = np.concatenate(([-1], ends, [len(data)]))
    lengths = np.diff(bounds) - 1  # never empty: a file without a newline is one line
    longest = int(lengths.argmax())
    if lengths[longest] > MAX_LINE_BYTES:
        raise IapError(f"manifest {path}: line {longest + 1} is {lengths[longest]:,} bytes long; a manifest line "
                       f"may be at most {MAX_LINE_BYTES:,} (one row of a URL and two captions)")
    return int(lengths[longest])


def _check_columns(n: int, path: str) -> None:
    if n > MAX_COLUMNS:
        raise IapError(f"manifest {path}: {n:,} columns; a manifest may have at most {MAX_COLUMNS:,} "
                       "(for a CSV/TSV: is the delimiter right?)")


def _read_jsonl(data: bytes, path: str, skips: _Skips) -> pa.Table:
    """Whole-file parse; on a malformed line, keep the object lines and count the others by line number.
    A block holds the longest line (arrow's default 1 MiB block rejects a valid longer one)."""
    options = pajson.ReadOptions(block_size=max(1 << 20, _longest_line(data, path) + 2))
    try:
        return pajson.read_json(io.BytesIO(data), read_options=options)
    except pa.ArrowInvalid:
        pass
    good, bad = [], []
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        (good if ok else bad).append(line if ok else i)
    skips.add("malformed_line", len(bad), f"{path}:{bad[0]}" if bad else "")
    return pajson.read_json(io.BytesIO(b"\n".join(good)), read_options=options) if good else pa.table({})


def _read_csv(data: bytes, path: str, delimiter: str, skips: _Skips) -> pa.Table:
    bad: list[str] = []

    def skip(row) -> str:  # a row with the wrong number of fields (arrow knows no line number here)
        bad.append(row.text[:60])
        return "skip"

    _longest_line(data, path)
    header = data[:data.find(b"\n") if b"\n" in data else len(data)]
    _check_columns(len(next(csv.reader([header.decode("utf-8", "replace")], delimiter=delimiter), [])), path)
    table = pacsv.read_csv(io.BytesIO(data),
                           parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                            invalid_row_handler=skip),
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    skips.add("malformed_line", len(bad), f"{path}: row {bad[0]!r}" if bad else "")
    return table


def _read_one(fs: fsspec.AbstractFileSystem, path: str, encoding: str, skips: _Skips) -> tuple[pa.Table, int]:
    """The file's table and how many of its rows were skipped as unreadable."""
    fmt = next((f for ext, f in FORMATS.items() if path.lower().endswith(ext)), None)
    if fmt is None:
        raise IapError(f"manifest {path}: unknown format (use .parquet, .csv, .tsv or .jsonl)")
    before = sum(skips.counts.values())
    try:
        with fs.open(path, "rb") as f:
            if fmt == "parquet":
                _check_columns(len(pq.ParquetFile(f).schema_arrow), path)
                f.seek(0)
                return pq.read_table(f), 0
            data = _decode(f.read(), path, encoding, skips)
        if fmt == "jsonl":
            table = _read_jsonl(data, path, skips)
        else:
            table = _read_csv(data, path, "\t" if fmt == "tsv" else ",", skips)
        _check_columns(table.num_columns, path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise IapError(f"manifest {path}: cannot read it as {fmt}: {str(e).splitlines()[0]}") from e
    return table, sum(skips.counts.values()) - before


def _normalise(table: pa.Table, path: str, cols: ManifestColumns, require_english: bool = True) -> pa.Table:
    names = table.column_names
    if not require_english and cols.caption_en not in names:  # English comes later (iap.data.english)
        table = table.append_column(cols.caption_en, pa.nulls(table.num_rows, pa.string()))
        names = table.column_names
    for role in ("url", "caption_zh", "caption_en"):
        col = getattr(cols, role)
        if col not in names:
            raise IapError(f"manifest {path}: column '{col}' ({role}) not found; columns are {names}; "
                           f"choose another with --{role.replace('_', '-')}-col")
    out = {"url": table[cols.url], "caption_zh": table[cols.caption_zh], "caption_en": table[cols.caption_en]}
    out = {k: pc.cast(v, pa.string()) for k, v in out.items()}
    if cols.key and cols.key in names:
        key = pc.cast(table[cols.key], pa.string())
    else:
        key = pa.array([hashlib.sha1(f"{u}\t{z}\t{e}".encode()).hexdigest()[:16] for u, z, e in
                        zip(*(out[c].to_pylist() for c in ("url", "caption_zh", "caption_en")), strict=True)])
    used = {cols.url, cols.caption_zh, cols.caption_en, cols.key}
    extras = {n: table[n] for n in names if n not in used and n not in {"key", "url", "caption_zh", "caption_en"}}
    return pa.table({"key": key, **out, **extras})


def _drop_bad_urls(table: pa.Table, schemes: list[str], skips: _Skips) -> pa.Table:
    """Only rows whose URL has an allowed scheme go to the download (a file:// row would be read from disk)."""
    allowed = "|".join(re.escape(s.lower()) for s in schemes) or "(?!)"
    ok = pc.fill_null(pc.match_substring_regex(pc.utf8_lower(pc.utf8_trim_whitespace(table["url"])),
                                               f"^({allowed})://"), False)
    bad = table.filter(pc.invert(ok))
    if bad.num_rows:
        skips.add("bad_url", bad.num_rows, f"key {bad['key'][0]}: {str(bad['url'][0])[:60]}")
    return table.filter(ok)


def _drop_duplicates(table: pa.Table, skips: _Skips) -> pa.Table:
    """Keep the first row of each key; a later one is a duplicate_row when it repeats that row
    exactly, else a duplicate_key (another row under a used key)."""
    n = table.num_rows
    order = pa.table({"key": table["key"], "i": pa.array(np.arange(n))})
    first = order.group_by("key", use_threads=False).aggregate([("i", "min")])
    keep = np.zeros(n, bool)
    keep[first["i_min"].to_numpy()] = True
    if keep.all():
        return table
    first_of = dict(zip(first["key"].to_pylist(), first["i_min"].to_pylist(), strict=True))
    dups = np.nonzero(~keep)[0]
    rows = table.take(pa.array(dups)).to_pylist()
    firsts = table.take(pa.array([first_of[r["key"]] for r in rows])).to_pylist()
    exact = [i for i, (r, f) in zip(dups, zip(rows, firsts, strict=True), strict=True) if r == f]
    skips.add("duplicate_row", len(exact), f"key {rows[0]['key'] if exact else ''}".strip())
    other = [r["key"] for r, f in zip(rows, firsts, strict=True) if r != f]
    skips.add("duplicate_key", len(other), f"key {other[0]}" if other else "")
    return table.filter(pa.array(keep))


def load_manifest(path: str, cols: ManifestColumns | None = None, require_english: bool = True) -> Manifest:
    """Every manifest row, kept or counted under the reason it was skipped. Without require_english, a
    manifest with no English column is read with empty English captions."""
    cols = cols or ManifestColumns()
    fs, files = _files(path)
    skips, tables, unreadable = _Skips(), [], 0
    for f in files:
        table, skipped = _read_one(fs, f, cols.encoding, skips)
        unreadable += skipped
        if table.num_rows:
            tables.append(_normalise(table, f, cols, require_english))
    if not tables:
        first = "; ".join(f"{reason} at {where}" for reason, where in skips.examples.items())
        raise IapError(f"manifest {path}: no rows" + (f" ({unreadable} unreadable: {first})" if unreadable else ""))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as e:
        raise IapError(f"manifest {path}: shards have incompatible columns: {e}") from e
    read = table.num_rows
    table = _drop_bad_urls(table, cols.url_schemes, skips)
    table = _drop_duplicates(table, skips)
    return Manifest(table, read + unreadable, dict(skips.counts), skips.examples)


def read_table(path: str, encoding: str = "utf-8") -> pa.Table:
    """Any table file(s) in a manifest format, as they are (unreadable lines dropped)."""
    fs, files = _files(path)
    skips = _Skips()
    try:
        return pa.concat_tables([_read_one(fs, f, encoding, skips)[0] for f in files], promote_options="permissive")
    except pa.ArrowException as e:
        raise IapError(f"table {path}: files have incompatible columns: {e}") from e


def read_manifest(path: str, cols: ManifestColumns | None = None) -> pa.Table:
    """The kept rows only (see load_manifest for the account of the others)."""
    return load_manifest(path, cols).table


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table (schema + values), independent of how it was stored."""
    h = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
