"""English captions for a Chinese-only manifest (Wukong-style `url, caption`): joined from a companion
table (e.g. a machine-translated set keyed by URL), and/or machine-translated with a seq2seq model.

Translations are cached by content under OUT/translations/<model>/<texts>.parquet, so a re-run does not
translate again. Every row says where its English came from (column `en_source`: manifest, join, mt);
a row that still has none is skipped and counted as `no_english`.
"""

from __future__ import annotations

import io
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from iap.config import StageConfig
from iap.data.manifest import Manifest, ManifestColumns, load_manifest, read_table
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


def _missing(en: pa.ChunkedArray) -> pa.Array:
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(pc.fill_null(en, "")), ""), True)


def complete_english(manifest: Manifest, cfg: EnglishConfig, out_url: str | None) -> Manifest:
    table = manifest.table
    en = table["caption_en"].to_pylist()
    source = [None if m else "manifest" for m in _missing(table["caption_en"]).to_pylist()]
    lineage: dict = {}
    if cfg.join:
        joined = _joined(table, cfg)
        filled = [i for i, (s, j) in enumerate(zip(source, joined, strict=True)) if s is None and j]
        for i in filled:
            en[i], source[i] = joined[i], "join"
        lineage["join"] = {"table": cfg.join, "on": cfg.join_on, "rows": len(filled)}
    todo = [i for i, s in enumerate(source) if s is None]
    if cfg.translate and todo:
        from iap.models.translator import fingerprint
        zh = table["caption_zh"].to_pylist()
        texts = sorted({zh[i] or "" for i in todo} - {""})
        translated = _translations(texts, cfg, out_url)
        for i in todo:
            if translated.get(zh[i] or ""):
                en[i], source[i] = translated[zh[i]], "mt"
        lineage["translate"] = {"model": cfg.translate, "fingerprint": fingerprint(cfg.translate),
                                "rows": sum(s == "mt" for s in source), "unique_captions": len(texts)}
    keep = pa.array([s is not None for s in source])
    table = table.set_column(table.column_names.index("caption_en"), "caption_en", pa.array(en, pa.string()))
    table = table.append_column("en_source", pa.array(source, pa.string())).filter(keep)
    skipped = dict(manifest.skipped)
    examples = dict(manifest.examples)
    lost = len(source) - table.num_rows
    if lost:
        skipped["no_english"] = lost
        examples["no_english"] = "key " + manifest.table["key"][source.index(None)].as_py()
    return Manifest(table, manifest.input_rows, skipped, examples, english=lineage)


def _joined(table: pa.Table, cfg: EnglishConfig) -> list[str | None]:
    other = read_table(cfg.join)
    for col in (cfg.join_on, cfg.join_caption):
        if col not in other.column_names:
            raise IapError(f"english join table {cfg.join}: column '{col}' not found; columns are {other.column_names}")
    pairs = {}
    for k, v in zip(pc.cast(other[cfg.join_on], pa.string()).to_pylist(),
                    pc.cast(other[cfg.join_caption], pa.string()).to_pylist(), strict=True):
        if k is not None and v and v.strip():
            pairs.setdefault(k, v)  # the first caption of a repeated key
    return [pairs.get(k) for k in table[cfg.join_on].to_pylist()]


def _translations(texts: list[str], cfg: EnglishConfig, out_url: str | None) -> dict[str, str]:
    """{Chinese: English} for these texts, from OUT/translations when this model translated them before."""
    from iap.models.translator import Translator, fingerprint
    model_id = content_id(fingerprint(cfg.translate))
    texts_id = content_id("\n".join(texts))
    url = f"{out_url.rstrip('/')}/translations/{model_id}/{texts_id}.parquet" if out_url else None
    if url and filesystem(url).exists(url):
        cached = pq.read_table(io.BytesIO(filesystem(url).cat_file(url)))
        return dict(zip(cached["zh"].to_pylist(), cached["en"].to_pylist(), strict=True))
    from iap.presets.names import resolve_translator
    from iap.system.runtime import detect
    translator = Translator(cfg.translate, detect("bf16"), folder=resolve_translator(cfg.translate))
    english = translator.translate(texts, cfg.batch_size)
    if url:
        filesystem(url).makedirs(url.rsplit("/", 1)[0], exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(pa.table({"zh": texts, "en": english}), buf)
        write_atomic(url, buf.getvalue())
    return dict(zip(texts, english, strict=True))
