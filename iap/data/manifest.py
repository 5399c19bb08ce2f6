"""Read a bilingual manifest (Parquet, CSV, TSV, JSONL; local path, glob or s3://) into one table.

Output columns: key, url, caption_zh, caption_en, then every extra column, carried through.
A missing column, an unreadable file or an empty manifest is one IapError naming file and column.
"""

from __future__ import annotations

import hashlib

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import Field

from iap.config import StageConfig
from iap.errors import IapError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class ManifestColumns(StageConfig):
    url: str = "url"
    caption_zh: str = "caption_zh"
    caption_en: str = "caption_en"
    key: str | None = Field("key", description="optional; a hash of url+captions when the column is absent")


def _files(path: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, _, paths = fsspec.get_fs_token_paths(path)
    files = sorted(p for p in paths if not fs.isdir(p)) if paths else []
    if not files:
        raise IapError(f"manifest {path}: no such file")
    return fs, files


def _read_one(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    fmt = next((f for ext, f in FORMATS.items() if path.lower().endswith(ext)), None)
    if fmt is None:
        raise IapError(f"manifest {path}: unknown format (use .parquet, .csv, .tsv or .jsonl)")
    try:
        with fs.open(path, "rb") as f:
            if fmt == "parquet":
                return pq.read_table(f)
            if fmt == "jsonl":
                return pajson.read_json(f)
            delimiter = "\t" if fmt == "tsv" else ","
            return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                                  convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise IapError(f"manifest {path}: cannot read it as {fmt}: {str(e).splitlines()[0]}") from e


def _normalise(table: pa.Table, path: str, cols: ManifestColumns) -> pa.Table:
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


def read_manifest(path: str, cols: ManifestColumns | None = None) -> pa.Table:
    cols = cols or ManifestColumns()
    fs, files = _files(path)
    tables = [_normalise(_read_one(fs, f), f, cols) for f in files]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as e:
        raise IapError(f"manifest {path}: shards have incompatible columns: {e}") from e
    if table.num_rows == 0:
        raise IapError(f"manifest {path}: no rows")
    return table


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table (schema + values), independent of how it was stored."""
    h = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
