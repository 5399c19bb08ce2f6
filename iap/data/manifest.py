"""Read a bilingual manifest (Parquet, CSV, TSV, JSONL; local path, glob or s3://) into local Parquet parts,
in memory that does not grow with the manifest: files are streamed batch by batch (iap.data.readers) into a
spill folder, and keys, URL rules and duplicates are worked out in DuckDB, which spills past its budget.

Output columns: key, url, caption_zh, caption_en, then every extra column, carried through, in manifest order.
Per-row problems are counted, never fatal: a line that is not valid text in the file's encoding, a
malformed JSONL line or CSV row, and duplicates (an exact repeat of an earlier row, or another row
under an earlier row's key) are skipped under their own reason, with a 1-based line number as example.
A missing column, a file in another encoding, an unreadable file or an empty manifest is one
IapError naming the file (and the column, or the encoding to pass).
"""

from __future__ import annotations

import codecs
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from iap.config import StageConfig
from iap.data.readers import MAX_COLUMNS, MAX_LINE_BYTES, Skips, list_files, read_file, read_table
from iap.data.sql import connect, ident, parquet, quote
from iap.errors import IapError
from iap.system.ids import content_id

__all__ = ["MAX_COLUMNS", "MAX_LINE_BYTES", "Manifest", "ManifestColumns", "load_manifest", "read_manifest",
           "read_table"]
ROLES = ("key", "url", "caption_zh", "caption_en")
ROW = "iap_row"  # the row's place in the manifest (files in name order): the first of duplicates wins
PART_ROWS = 1_000_000  # rows per output part: what one img2dataset input file holds
ORDER_RANGE = 2_000_000  # rows sorted at a time


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
    """The manifest's rows, one per key, as local Parquet parts, and the account of every row not kept."""

    files: list[str]  # Parquet parts: iap_row (the row's place), key, url, caption_zh, caption_en, extras
    num_rows: int
    input_rows: int  # rows (text lines) in the files, before any was skipped
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    examples: dict[str, str] = field(default_factory=dict)  # reason -> where its first row is
    english: dict = field(default_factory=dict)  # where missing English came from (join, translation model)
    fingerprint: str = ""  # the rows' content, whatever their order or file layout (names the download)
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # holds `files` while alive

    @property
    def table(self) -> pa.Table:
        """Every row in memory, in manifest order: for small manifests (tests, previews)."""
        table = pa.concat_tables(pq.read_table(f) for f in self.files)
        return table.sort_by(ROW).drop_columns([ROW])

    @classmethod
    def of(cls, table: pa.Table) -> Manifest:
        """A manifest of these rows as they are (key, url, caption_zh, caption_en, extras; keys unique)."""
        work = tempfile.TemporaryDirectory(prefix="iap-manifest-")
        files = [str(Path(work.name, "part-00000.parquet"))]
        pq.write_table(table.add_column(0, ROW, pa.array(range(table.num_rows), pa.int64())), files[0])
        n, content = fingerprint(connect(), f"(SELECT * EXCLUDE ({ROW}) FROM {parquet(files)})")
        return cls(files, n, n, fingerprint=content, workdir=work)

    def relation(self) -> str:
        """The rows as a DuckDB relation (with iap_row: ORDER BY it for manifest order)."""
        return parquet(self.files)


def load_manifest(path: str, cols: ManifestColumns | None = None, require_english: bool = True) -> Manifest:
    """Every manifest row, kept or counted under the reason it was skipped. Without require_english, a
    manifest with no English column is read with empty English captions."""
    cols = cols or ManifestColumns()
    fs, files = list_files(path)
    work = tempfile.TemporaryDirectory(prefix="iap-manifest-")
    skips, spilled, rows = Skips(), [], 0
    for i, f in enumerate(files):
        dest = str(Path(work.name, "read", f"{i:05d}.parquet"))
        n = spill(fs, f, cols.encoding, skips, dest, rows,
                  lambda table, start, f=f: _normalise(table, f, cols, require_english, start))
        if n:
            spilled.append(dest)
        rows += n
    unreadable = skips.total()
    if not spilled:
        first = "; ".join(f"{reason} at {where}" for reason, where in skips.examples.items())
        raise IapError(f"manifest {path}: no rows" + (f" ({unreadable} unreadable: {first})" if unreadable else ""))
    con = connect(spill=str(Path(work.name, "duckdb")))
    try:
        _account(con, spilled, cols.url_schemes, skips)
        kept = write_parts(ordered(con, "kept"), Path(work.name, "kept"))
    except (duckdb.BinderException, duckdb.ConversionException) as e:
        raise IapError(f"manifest {path}: files have incompatible columns: {str(e).splitlines()[0]}") from e
    manifest = Manifest(kept, 0, rows + unreadable, dict(skips.counts), skips.examples, workdir=work)
    manifest.num_rows, manifest.fingerprint = fingerprint(con, f"(SELECT * EXCLUDE ({ROW}) FROM {manifest.relation()})")
    return manifest


def spill(fs, path: str, encoding: str, skips: Skips, dest: str, start: int = 0,
          transform: Callable[[pa.Table, int], pa.Table] | None = None) -> int:
    """Stream one file's rows (transformed: given each batch and its first row's number; else numbered in
    column iap_row) into a Parquet file; returns how many rows it holds."""
    transform = transform or (lambda table, first: table.add_column(0, ROW, pa.array(range(
        first, first + table.num_rows), pa.int64())))
    written = [0]

    def consume(batches: Iterable[pa.RecordBatch]) -> None:
        written[0] = 0
        Path(dest).unlink(missing_ok=True)
        writer = None
        try:
            for batch in batches:
                if not batch.num_rows:
                    continue
                table = transform(pa.Table.from_batches([batch]), start + written[0])
                writer = writer or pq.ParquetWriter(dest, table.schema)
                writer.write_table(table)
                written[0] += table.num_rows
        finally:
            if writer:
                writer.close()
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    read_file(fs, path, encoding, skips, consume)
    return written[0]


def _normalise(table: pa.Table, path: str, cols: ManifestColumns, require_english: bool, start: int) -> pa.Table:
    names = table.column_names
    if not require_english and cols.caption_en not in names:  # English comes later (iap.data.english)
        table = table.append_column(cols.caption_en, pa.nulls(table.num_rows, pa.string()))
        names = table.column_names
    for role in ("url", "caption_zh", "caption_en"):
        col = getattr(cols, role)
        if col not in names:
            raise IapError(f"manifest {path}: column '{col}' ({role}) not found; columns are {names}; "
                           f"choose another with --{role.replace('_', '-')}-col")
    out = {role: pc.cast(table[getattr(cols, role)], pa.string()) for role in ROLES[1:]}
    # no key column: NULL here, the hash of url+captions in SQL (_keyed)
    key = pc.cast(table[cols.key], pa.string()) if cols.key and cols.key in names else pa.nulls(table.num_rows,
                                                                                               pa.string())
    used = {cols.url, cols.caption_zh, cols.caption_en, cols.key, *ROLES, ROW}
    extras = {n: table[n] for n in names if n not in used}
    return pa.table({ROW: pa.array(range(start, start + table.num_rows), pa.int64()), "key": key, **out, **extras})


def _keyed(files: list[str]) -> str:
    """The rows with their keys: the manifest's, else sha1 of url, zh and en (as str() wrote them: None for NULL)."""
    text = " || '\t' || ".join(f"coalesce({c}, 'None')" for c in ("url", "caption_zh", "caption_en"))
    return f"SELECT * REPLACE (coalesce(key, left(sha1({text}), 16)) AS key) FROM {parquet(files)}"


def _account(con: duckdb.DuckDBPyConnection, files: list[str], schemes: list[str], skips: Skips) -> None:
    """Table `kept`: rows with an allowed URL scheme (a file:// row would be read from disk), the first of each
    key; a later row is a duplicate_row when it repeats that row exactly, else a duplicate_key."""
    allowed = "|".join(re.escape(s.lower()) for s in schemes) or "[^\\s\\S]"  # no scheme: nothing matches
    scheme = quote(r"^[\s\p{Z}]*(" + allowed + ")://")  # leading white space of any script, as arrow trims it
    con.execute(f"""CREATE TEMP TABLE rows AS SELECT *, coalesce(regexp_matches(lower(url), {scheme}), false)
                    AS url_ok FROM ({_keyed(files)})""")
    n, key, url = con.execute(f"SELECT count(*), arg_min(key, {ROW}), arg_min(url, {ROW}) FROM rows "
                              "WHERE NOT url_ok").fetchall()[0]
    skips.add("bad_url", n, f"key {key}: {str(url)[:60]}")
    con.execute(f"CREATE TEMP TABLE firsts AS SELECT key, min({ROW}) AS first FROM rows WHERE url_ok GROUP BY key")
    columns = [r[0] for r in con.execute("DESCRIBE rows").fetchall() if r[0] not in (ROW, "url_ok")]
    same = " AND ".join(f"d.{ident(c)} IS NOT DISTINCT FROM o.{ident(c)}" for c in columns)
    dups = con.execute(f"""SELECT {same} AS exact, count(*), arg_min(d.key, d.{ROW})
        FROM rows d JOIN firsts f ON d.key = f.key AND d.{ROW} <> f.first JOIN rows o ON o.{ROW} = f.first
        WHERE d.url_ok GROUP BY ALL ORDER BY exact DESC""").fetchall()
    for exact, n, key in dups:
        skips.add("duplicate_row" if exact else "duplicate_key", n, f"key {key}")
    con.execute(f"CREATE TEMP TABLE kept AS SELECT * EXCLUDE (url_ok) FROM rows WHERE {ROW} IN (SELECT first FROM firsts)")
    con.execute("DROP TABLE rows")  # its blocks are DuckDB's budget: free them for the ordered write


def ordered(con: duckdb.DuckDBPyConnection, relation: str, columns: str = "*") -> pa.RecordBatchReader:
    """The relation's rows in manifest order (iap_row), sorted ORDER_RANGE rows at a time, so that every sort
    fits in DuckDB's memory budget whatever the manifest's size (one global ORDER BY does not)."""
    schema = con.sql(f"SELECT {columns} FROM {relation} LIMIT 0").to_arrow_table().schema
    lo, hi = con.execute(f"SELECT min({ROW}), max({ROW}) FROM {relation}").fetchall()[0]

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(lo, hi + 1, ORDER_RANGE) if lo is not None else ():
            yield from con.sql(f"SELECT {columns} FROM {relation} WHERE {ROW} >= {start} AND {ROW} < "
                               f"{start + ORDER_RANGE} ORDER BY {ROW}").to_arrow_reader(100_000)
    return pa.RecordBatchReader.from_batches(schema, batches())


def write_parts(reader: pa.RecordBatchReader, folder: Path, rows: int = PART_ROWS) -> list[str]:
    """The reader's rows into Parquet parts of `rows` rows each, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    writer, left = None, 0
    for batch in reader:
        while batch.num_rows:
            if not left:
                if writer:
                    writer.close()
                parts.append(str(folder / f"part-{len(parts):05d}.parquet"))
                writer, left = pq.ParquetWriter(parts[-1], batch.schema), rows
            piece = batch.slice(0, left)
            writer.write_batch(piece)
            left -= piece.num_rows
            batch = batch.slice(piece.num_rows)
    if writer:
        writer.close()
    if not parts:  # no row: an empty part keeps the columns
        parts.append(str(folder / "part-00000.parquet"))
        pq.write_table(reader.schema.empty_table(), parts[-1])
    return parts


def fingerprint(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[int, str]:
    """(rows, content hash) of a relation: its columns and rows, whatever their order or file layout. Every
    value is length-prefixed, so no two different rows hash the same text."""
    schema = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    values = ", '|', ".join(f"coalesce(length(CAST({ident(c)} AS VARCHAR)) || ':' || CAST({ident(c)} AS VARCHAR), "
                            "'-')" for c, *_ in schema)
    n, x, s = con.execute(f"SELECT count(*), bit_xor(h), sum(h >> 20) FROM (SELECT md5_number_lower(concat({values}))"
                          f" AS h FROM {relation})").fetchall()[0]
    columns = ",".join(f"{c}:{t}" for c, t, *_ in schema)
    return n, content_id(f"manifest v2:{columns}:{n}:{x}:{s}")


def check_manifest(path: str, cols: ManifestColumns | None = None, require_english: bool = True) -> None:
    """A quick look before any work: the files exist, have a known format and the columns; one message if not.
    Reads each file's first batch only (the whole manifest is read by the data stage)."""
    cols = cols or ManifestColumns()
    fs, files = list_files(path)

    class _Enough(Exception):
        pass

    def first(batches: Iterable[pa.RecordBatch]) -> None:
        for batch in batches:
            _normalise(pa.Table.from_batches([batch]), f, cols, require_english, 0)
            raise _Enough()
    for f in files:
        try:
            read_file(fs, f, cols.encoding, Skips(), first)
        except _Enough:
            pass


def read_manifest(path: str, cols: ManifestColumns | None = None) -> pa.Table:
    """The kept rows only, in memory (see load_manifest for the account of the others)."""
    return load_manifest(path, cols).table
