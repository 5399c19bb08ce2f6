"""DuckDB connections for the data stage: storage URLs read through fsspec (s3:// via s3fs; DuckDB's httpfs would
need a download), and a fixed memory budget that spills to local disk, so work over a manifest or a download
of any size runs in the same memory."""

from __future__ import annotations

import os

import duckdb
import fsspec

MEMORY = os.environ.get("IAP_DUCKDB_MEMORY", "512MB")  # DuckDB's own buffers; past it, sorts and joins spill


def connect(*urls: str, spill: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection that reads every URL's filesystem; with `spill` (a local folder), bounded in memory."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # it would draw over the command's own output
    registered = set()
    for url in urls:
        fs, _, _ = fsspec.get_fs_token_paths(url)
        if "file" not in fs.protocol and fs.protocol not in registered:
            con.register_filesystem(fs)
            registered.add(fs.protocol)
    if spill:
        con.execute(f"SET temp_directory = {quote(spill)}")
        con.execute(f"SET memory_limit = {quote(MEMORY)}")
        con.execute("SET preserve_insertion_order = false")  # every ordered result says ORDER BY
    return con


def ident(name: str) -> str:
    """A column name as a DuckDB identifier: quoted, its quotes doubled. Manifest columns are named by
    whoever wrote the manifest; a name must never become SQL."""
    return '"' + name.replace('"', '""') + '"'


def quote(text: str) -> str:
    """A string literal."""
    return "'" + text.replace("'", "''") + "'"


def parquet(files: list[str]) -> str:
    """The files as one relation (columns matched by name)."""
    return f"read_parquet([{', '.join(quote(f) for f in files)}], union_by_name = true)"
