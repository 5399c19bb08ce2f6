"""English captions for a Chinese-only manifest (Wukong-style `url, caption`): joined from a companion
table (e.g. a machine-translated set keyed by URL), and/or machine-translated with a seq2seq model.

Translations are cached per caption under OUT/translations/<model>/*.parquet, so a re-run, or a refreshed
manifest, translates only captions no earlier run translated. Every row says where its English came from (column `en_source`: manifest, join, mt);
a row that still has none is skipped and counted as `no_english`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from iap.config import StageConfig
from iap.data.manifest import ROW, Manifest, ManifestColumns, load_manifest, ordered, spill, write_parts
from iap.data.manifest import fingerprint as fingerprint_of
from iap.data.readers import Skips, list_files
from iap.data.sql import connect, ident, parquet, quote
from iap.errors import IapError
from iap.system.ids import content_id
from iap.system.storage import filesystem, write_atomic


class EnglishConfig(StageConfig):
    """Where English captions come from for rows whose manifest has none."""

    join: str | None = Field(None, description="a table (Parquet/CSV/TSV/JSONL, local or s3://) holding English "
                             "captions for the manifest's rows, e.g. a translated companion set")
    join_on: Literal["url", "key"] = Field("url", description="the column both tables share")
    join_caption: str = Field("caption_en", description="the join table's English caption column")
    translate: str | None = Field(None, description="a seq2seq translation model for rows still without English: "
                                  "HF id (e.g. Helsinki-NLP/opus-mt-zh-en), folder, or preset:tiny-mt")
    batch_size: int = Field(64, ge=1, description="captions per translation batch")

    @property
    def active(self) -> bool:
        return bool(self.join or self.translate)


def load_triples(path: str, cols: ManifestColumns | None = None, english: EnglishConfig | None = None,
                 out_url: str | None = None) -> Manifest:
    """The manifest's rows with English captions: the manifest's own, then joined, then translated."""
    english = english or EnglishConfig()
    manifest = load_manifest(path, cols, require_english=not english.active)
    if not english.active:
        return manifest
    return complete_english(manifest, english, out_url)


BLANK = r"^[\s\p{Z}]*$"  # empty or white space of any script (arrow's and str.strip()'s idea of it)
TRANSLATE_CHUNK = 50_000  # captions per translation step: each is cached as it finishes, so a killed run resumes


def _missing(column: str) -> str:
    return f"coalesce(regexp_matches({column}, {quote(BLANK)}), true)"


def complete_english(manifest: Manifest, cfg: EnglishConfig, out_url: str | None, dry_run: bool = False) -> Manifest:
    """The rows with English: the manifest's own (en_source manifest), then joined (join), then translated (mt);
    the rest are skipped as no_english. All in DuckDB over the manifest's parts: memory does not grow with rows.
    A dry run translates nothing: the rows it would translate are kept, en_source `to_translate`."""
    work = Path(manifest.workdir.name) if manifest.workdir else Path(tempfile.mkdtemp(prefix="iap-english-"))
    con = connect(*(u for u in (out_url, cfg.join) if u), spill=str(work / "duckdb-english"))
    con.execute(f"""CREATE TEMP TABLE rows AS SELECT *, CASE WHEN NOT {_missing('caption_en')} THEN 'manifest' END
                    AS en_source FROM {manifest.relation()}""")
    lineage: dict = {}
    if cfg.join:
        filled = _fill(con, _joined(con, cfg, work), cfg.join_on, "join")
        lineage["join"] = {"table": cfg.join, "on": cfg.join_on, "rows": filled}
    texts = con.execute("SELECT count(DISTINCT caption_zh) FROM rows WHERE en_source IS NULL "
                        f"AND NOT {_missing('caption_zh')}").fetchall()[0][0]
    if cfg.translate and texts and dry_run:
        rows = con.execute(f"UPDATE rows SET en_source = 'to_translate' WHERE en_source IS NULL AND NOT "
                           f"{_missing('caption_zh')}").fetchall()[0][0]
        lineage["translate"] = {"model": cfg.translate, "to_translate": rows, "unique_captions": texts}
    elif cfg.translate and texts:
        from iap.models.translator import fingerprint
        rows = _fill(con, _translations(con, cfg, out_url, work), "caption_zh", "mt")
        lineage["translate"] = {"model": cfg.translate, "fingerprint": fingerprint(cfg.translate), "rows": rows,
                                "unique_captions": texts}
    skipped, examples = dict(manifest.skipped), dict(manifest.examples)
    lost, key = con.execute(f"SELECT count(*), arg_min(key, {ROW}) FROM rows WHERE en_source IS NULL").fetchall()[0]
    if lost:
        skipped["no_english"], examples["no_english"] = lost, f"key {key}"
    con.execute("CREATE TEMP VIEW english AS SELECT * FROM rows WHERE en_source IS NOT NULL")
    files = write_parts(ordered(con, "english"), work / "english")
    n, content = fingerprint_of(con, f"(SELECT * EXCLUDE ({ROW}) FROM {parquet(files)})")
    return Manifest(files, n, manifest.input_rows, skipped, examples, lineage, content, manifest.workdir)


def _fill(con: duckdb.DuckDBPyConnection, pairs: str, on: str, source: str) -> int:
    """Rows still without English take it from `pairs` (k, en) where their column `on` equals k."""
    return con.execute(f"""UPDATE rows SET caption_en = p.en, en_source = {quote(source)} FROM ({pairs}) p
                           WHERE rows.en_source IS NULL AND rows.{ident(on)} = p.k""").fetchall()[0][0]


def _joined(con: duckdb.DuckDBPyConnection, cfg: EnglishConfig, work: Path) -> str:
    """The join table's (key, English) pairs, the first caption of a repeated key, streamed from its files."""
    fs, files = list_files(cfg.join)
    parts, rows = [], 0
    for i, f in enumerate(files):
        dest = str(work / "join" / f"{i:05d}.parquet")
        n = spill(fs, f, "utf-8", Skips(), dest, rows)
        parts.append(dest) if n else None
        rows += n
    names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {parquet(parts)}").fetchall()] if parts else []
    for col in (cfg.join_on, cfg.join_caption):
        if col not in names:
            raise IapError(f"english join table {cfg.join}: column '{col}' not found; columns are "
                           f"{[n for n in names if n != ROW]}")
    on, caption = (f"CAST({ident(c)} AS VARCHAR)" for c in (cfg.join_on, cfg.join_caption))
    return (f"SELECT {on} AS k, arg_min({caption}, {ROW}) AS en FROM {parquet(parts)} "
            f"WHERE {on} IS NOT NULL AND NOT {_missing(caption)} GROUP BY k")


def _translations(con: duckdb.DuckDBPyConnection, cfg: EnglishConfig, out_url: str | None, work: Path) -> str:
    """(Chinese, English) for every caption still without English, as relation (k, en). Translations are cached
    per caption under OUT/translations/<model>/ (without OUT, for this call only): a refreshed manifest
    translates only its new captions, and a killed run keeps the chunks it finished."""
    from iap.models.translator import fingerprint
    folder = f"{out_url.rstrip('/')}/translations/{content_id(fingerprint(cfg.translate))}" if out_url \
        else str(work / "translations")
    fs, parts = filesystem(folder), [folder + "/*.parquet"]
    cached = f"SELECT zh, en FROM {parquet(parts)}" if fs.glob(parts[0]) else \
        "SELECT NULL::VARCHAR AS zh, NULL::VARCHAR AS en LIMIT 0"
    todo = (f"SELECT DISTINCT caption_zh AS zh FROM rows WHERE en_source IS NULL AND NOT {_missing('caption_zh')} "
            f"AND caption_zh NOT IN (SELECT zh FROM ({cached}) WHERE zh IS NOT NULL) ORDER BY zh")
    translator = None
    for batch in con.sql(todo).to_arrow_reader(TRANSLATE_CHUNK):
        texts = batch["zh"].to_pylist()
        if translator is None:
            translator = _translator(cfg)
        buf = io.BytesIO()
        pq.write_table(pa.table({"zh": texts, "en": translator.translate(texts, cfg.batch_size)}), buf)
        fs.makedirs(folder, exist_ok=True)
        write_atomic(f"{folder}/{content_id(chr(10).join(texts))}.parquet", buf.getvalue())
        fs.invalidate_cache(folder)  # DuckDB lists the folder through this filesystem's cache
    return (f"SELECT zh AS k, any_value(en) AS en FROM {parquet(parts)} "
            f"WHERE NOT {_missing('en')} GROUP BY zh")


def _translator(cfg: EnglishConfig):
    from iap.models.translator import Translator
    from iap.presets.names import resolve_translator
    from iap.system.runtime import detect
    return Translator(cfg.translate, detect("bf16"), folder=resolve_translator(cfg.translate))
