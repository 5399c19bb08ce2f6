"""Table files (Parquet, CSV, TSV, JSONL; local or s3://) read as a stream of Arrow batches, so memory stays at
a block whatever the file's size, with bounds on what a file may make the worker parse.

Streaming is the fast path. A text file it cannot stream cleanly (lines that are not valid UTF-8, a malformed
JSONL line, a type that changes past the first block) is read again whole by the reference reader, which skips
and counts each bad line under its reason with a 1-based line number: such a file costs its size in memory.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from iap.errors import IapError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# Bounds on what a manifest may make the worker parse: a caption row has a handful of columns and a few kB.
# A file past them (100k columns, a gigabyte on one line: a wrong delimiter, or hostile) is one message.
MAX_COLUMNS = 1000
MAX_LINE_BYTES = 16 << 20
GUESSES = ("gbk", "gb18030", "big5", "shift_jis", "euc-kr")  # tried, in order, on a file that is not UTF-8
CHUNK = 8 << 20  # bytes read from storage at a time
BLOCK = MAX_LINE_BYTES + 2  # arrow's parse block: holds the longest allowed line, so a valid line always parses
PARQUET_BATCH = 65_536


class Skips:
    """Rows skipped, by reason, with where the first of each was."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, n: int, example: str) -> None:
        if n:
            self.counts[reason] += n
            self.examples.setdefault(reason, example)

    def total(self) -> int:
        return sum(self.counts.values())


def list_files(path: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, _, paths = fsspec.get_fs_token_paths(path)
    files = sorted(p for p in paths if not fs.isdir(p)) if paths else []
    if not files:
        raise IapError(f"manifest {path}: no such file")
    return fs, files


def file_format(path: str) -> str:
    fmt = next((f for ext, f in FORMATS.items() if path.lower().endswith(ext)), None)
    if fmt is None:
        raise IapError(f"manifest {path}: unknown format (use .parquet, .csv, .tsv or .jsonl)")
    return fmt


def read_file(fs: fsspec.AbstractFileSystem, path: str, encoding: str, skips: Skips,
              consume: Callable[[Iterable[pa.RecordBatch]], None]) -> None:
    """Feed the file's batches to `consume`. If the stream turns out to need the whole-file reader, `consume`
    is called again from the start (it must discard what it took from the first call)."""
    fmt = file_format(path)
    before, examples = Counter(skips.counts), dict(skips.examples)
    try:
        try:
            with fs.open(path, "rb") as f:
                consume(_stream(f, path, fmt, encoding, skips))
            return
        except _NotStreamable:
            skips.counts, skips.examples = before, examples
        with fs.open(path, "rb") as f:
            consume(_whole(f.read(), path, fmt, encoding, skips).to_batches())
    except (pa.ArrowException, OSError, ValueError) as e:
        raise IapError(f"manifest {path}: cannot read it as {fmt}: {str(e).splitlines()[0]}") from e


def read_table(path: str, encoding: str = "utf-8") -> pa.Table:
    """Any table file(s) in a manifest format, whole, as they are (unreadable lines dropped). Small tables only."""
    fs, files = list_files(path)
    tables: list[pa.Table] = []

    def collect(batches: Iterable[pa.RecordBatch]) -> None:
        got = list(batches)
        if got:
            tables.append(pa.Table.from_batches(got))
    for f in files:
        read_file(fs, f, encoding, Skips(), collect)
    try:
        return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    except pa.ArrowException as e:
        raise IapError(f"table {path}: files have incompatible columns: {e}") from e


class _NotStreamable(Exception):
    """The file needs the whole-file reader (it has lines to skip, or a parse the stream cannot make)."""


def _stream(f, path: str, fmt: str, encoding: str, skips: Skips) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        yield from _parquet(f, path)
        return
    text = _CheckedText(f, path, encoding)
    bad: list[str] = []
    try:
        if fmt == "jsonl":
            reader = pajson.open_json(pa.PythonFile(text, mode="r"), read_options=pajson.ReadOptions(block_size=BLOCK))
        else:
            delimiter = "\t" if fmt == "tsv" else ","
            header = text.peek_line().decode("utf-8", "replace")
            check_columns(len(next(csv.reader([header], delimiter=delimiter), [])), path)
            reader = pacsv.open_csv(pa.PythonFile(text, mode="r"),
                                    read_options=pacsv.ReadOptions(block_size=BLOCK),
                                    parse_options=_csv_parse(delimiter, bad),
                                    convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        check_columns(len(reader.schema), path)
        yield from reader
    except pa.ArrowInvalid as e:
        raise _NotStreamable() from e
    skips.add("malformed_line", len(bad), f"{path}: row {bad[0]!r}" if bad else "")


def _parquet(f, path: str) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(f)
    check_columns(len(parquet.schema_arrow), path)
    if parquet.metadata.num_rows == 0:
        return
    yield from parquet.iter_batches(batch_size=PARQUET_BATCH)


class _CheckedText(io.RawIOBase):
    """A text file's bytes as UTF-8, chunk by chunk: transcoded from `encoding`, the BOM dropped, each line's
    length checked. A line that is not valid UTF-8 stops the stream (the whole-file reader skips it)."""

    def __init__(self, raw, path: str, encoding: str) -> None:
        self.raw, self.path, self.encoding = raw, path, encoding
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.pending = b""
        self.lines = 0  # complete lines passed on
        self.line_bytes = 0  # bytes of the current, unfinished line
        self.started = self.ended = False

    def readable(self) -> bool:
        return True

    def peek_line(self) -> bytes:
        while b"\n" not in self.pending and self._fill():
            pass
        return self.pending.split(b"\n", 1)[0]

    def readinto(self, buffer) -> int:
        if not self.pending:
            self._fill()
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _fill(self) -> bool:
        if self.ended:
            return False
        chunk = self.raw.read(CHUNK)
        self.ended = not chunk
        try:
            text = self.decoder.decode(chunk, final=self.ended)
        except UnicodeDecodeError as e:
            if self.encoding == "utf-8":
                raise _NotStreamable() from e
            line = self.lines + chunk[:max(e.start, 0)].count(b"\n") + 1
            raise IapError(f"manifest {self.path}: line {line} is not valid {self.encoding}; pass the file's "
                           "encoding with --encoding") from e
        data = chunk if self.encoding == "utf-8" else text.encode()  # UTF-8 is checked, and passed on as read
        if not self.started:
            data, self.started = data.removeprefix(codecs.BOM_UTF8), True
        self._check_lines(data)
        self.pending += data
        return bool(data)

    def _check_lines(self, data: bytes) -> None:
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
        if len(ends):
            lengths = np.diff(np.concatenate(([-1], ends))) - 1
            lengths[0] += self.line_bytes
            longest = int(lengths.argmax())
            if lengths[longest] > MAX_LINE_BYTES:
                self._too_long(self.lines + longest + 1, int(lengths[longest]))
            self.lines += len(ends)
            self.line_bytes = len(data) - int(ends[-1]) - 1
        else:
            self.line_bytes += len(data)
        if self.line_bytes > MAX_LINE_BYTES:
            self._too_long(self.lines + 1, self.line_bytes)

    def _too_long(self, line: int, length: int) -> None:
        raise _line_too_long(self.path, line, length)


def _line_too_long(path: str, line: int, length: int) -> IapError:
    return IapError(f"manifest {path}: line {line} is {length:,} bytes long; a manifest line may be at most "
                    f"{MAX_LINE_BYTES:,} (one row of a URL and two captions)")


def check_columns(n: int, path: str) -> None:
    if n > MAX_COLUMNS:
        raise IapError(f"manifest {path}: {n:,} columns; a manifest may have at most {MAX_COLUMNS:,} "
                       "(for a CSV/TSV: is the delimiter right?)")


def _csv_parse(delimiter: str, bad: list[str]) -> pacsv.ParseOptions:
    def skip(row) -> str:  # a row with the wrong number of fields (arrow knows no line number here)
        bad.append(row.text[:60])
        return "skip"
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=skip)


# ---------------------------------------------------------------- the reference reader: the whole file at once


def _whole(raw: bytes, path: str, fmt: str, encoding: str, skips: Skips) -> pa.Table:
    if fmt == "parquet":
        parquet = pq.ParquetFile(io.BytesIO(raw))
        check_columns(len(parquet.schema_arrow), path)
        return parquet.read()
    data = _decode(raw, path, encoding, skips)
    _longest_line(data, path)
    table = _read_jsonl(data, path, skips) if fmt == "jsonl" else _read_csv(data, path, fmt, skips)
    check_columns(table.num_columns, path)
    return table


def _decode(raw: bytes, path: str, encoding: str, skips: Skips) -> bytes:
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


def _longest_line(data: bytes, path: str) -> None:
    """One message, naming the line, when a line is over MAX_LINE_BYTES."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    lengths = np.diff(np.concatenate(([-1], ends, [len(data)]))) - 1  # never empty: no newline is one line
    longest = int(lengths.argmax())
    if lengths[longest] > MAX_LINE_BYTES:
        raise _line_too_long(path, longest + 1, int(lengths[longest]))


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
        return True
    except UnicodeDecodeError:
        return False


def _read_jsonl(data: bytes, path: str, skips: Skips) -> pa.Table:
    """Whole-file parse; on a malformed line, keep the object lines and count the others by line number."""
    options = pajson.ReadOptions(block_size=BLOCK)
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


def _read_csv(data: bytes, path: str, fmt: str, skips: Skips) -> pa.Table:
    delimiter = "\t" if fmt == "tsv" else ","
    header = data[:data.find(b"\n") if b"\n" in data else len(data)]
    check_columns(len(next(csv.reader([header.decode("utf-8", "replace")], delimiter=delimiter), [])), path)
    bad: list[str] = []
    table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(block_size=BLOCK),
                           parse_options=_csv_parse(delimiter, bad),
                           convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    skips.add("malformed_line", len(bad), f"{path}: row {bad[0]!r}" if bad else "")
    return table
