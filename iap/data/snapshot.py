"""Filter downloaded shards with DuckDB into a dataset snapshot.

A snapshot is OUT/snapshots/<id>/{train,val,test}/part-NNNNN.parquet plus snapshot.json (id, row
counts, funnel, config, input fingerprint). <id> hashes the content of the successful input rows
and the filter config: the same inputs and config give the same id and are not recomputed. A
snapshot is visible (has snapshot.json) only once complete: it is built in a temporary local
folder and committed by a rename (local) or an upload with snapshot.json written last (s3://).

Captions are normalised first (iap.data.normalise: markup, entities, full-width Latin, zero-width
characters, platform artifacts, whitespace); the snapshot stores the normalised captions and keeps
the originals as caption_zh_raw / caption_en_raw. Rules run in order; each removes rows that survived
the earlier ones and reports how many, with a few examples. Removed rows, with the rule that removed
each, go to the snapshot's rejects.parquet (no image bytes).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import fsspec
from pydantic import Field, field_validator

from iap.config import StageConfig
from iap.data import junk, normalise, script
from iap.data.sql import connect, ident, quote
from iap.errors import IapError
from iap.system.ids import content_id
from iap.system.storage import staged_folder

SPLITS = ("train", "val", "test")
CORE_COLUMNS = ["key", "url", "caption_zh", "caption_en", "caption_zh_raw", "caption_en_raw", "image", "width",
                "height", "original_width", "original_height", "sha256"]
REJECT_COLUMNS = ["key", "url", "removed_by", "caption_zh", "caption_en", "caption_zh_raw", "caption_en_raw",
                  "original_width", "original_height", "sha256"]
EXAMPLES = 3  # removed rows shown per rule in the funnel
REJECTS = "rejects.parquet"


class FilterConfig(StageConfig):
    """The snapshot's rules, applied in this order."""

    normalise: Literal["none", "v1"] = Field("v1", description="caption normalisation before the rules "
                                             "(iap.data.normalise; v1: entities, tags, full-width Latin, zero-width "
                                             "and control characters, strip patterns, whitespace, segmented Chinese)")
    strip_patterns: list[str] = Field(default_factory=lambda: list(normalise.DEFAULT_ARTIFACTS), description=(
        "RE2 patterns removed from captions: platform artifacts (link placeholders, [emoticons], @mentions, "
        "#topics#); on the command line a JSON array when a pattern holds a comma"))
    boilerplate: list[str] = Field(default_factory=lambda: list(normalise.DEFAULT_BOILERPLATE), description=(
        "phrases removed from captions, any case (a caption left empty is removed as boilerplate)"))
    reject_file_names: bool = Field(True, description="captions that are image file names (IMG_0123.JPG)")
    reject_spam: bool = Field(True, description="captions with URLs, e-mail addresses, phone or WeChat/QQ numbers")
    reject_mojibake: bool = Field(True, description="captions with mojibake (锟斤拷, Ã©, several U+FFFD)")
    zh_min_chars: int = Field(2, ge=0, description="characters of caption_zh")
    zh_max_chars: int = Field(256, ge=1)
    en_min_words: int = Field(2, ge=0)
    en_max_words: int = Field(77, ge=1)
    zh_han_ratio: float = Field(0.5, ge=0, le=1, description="share of Han ideographs among caption_zh's letters "
                                "(other scripts and the Latin words over the allowance; punctuation, digits and "
                                "emoji are neutral)")
    zh_latin_allowance: int = Field(3, ge=0, description="Latin words a Chinese caption holds for free "
                                    "(tags, brand names: '一只猫, masterpiece, 8k')")
    zh_reject_kana_hangul: bool = Field(True, description="remove Japanese and Korean captions (by the shares below)")
    zh_max_hiragana_share: float = Field(0.2, ge=0, le=1, description="Japanese: at least 2 hiragana and this "
                                         "share of the non-Latin letters (a lone の stays)")
    zh_max_kana_hangul_share: float = Field(0.5, ge=0, le=1, description="Japanese or Korean: kana and Hangul "
                                            "make up this share of the non-Latin letters (brand names stay)")
    zh_convert: Literal["none", "t2s"] = Field("none", description="t2s: Traditional -> Simplified Chinese (OpenCC) "
                                               "before the rules")
    en_latin_ratio: float = Field(0.8, ge=0, le=1, description="share of Latin letters among caption_en's letters")
    min_side: int = Field(0, ge=0, description="pixels, of the original image")
    max_aspect: float = Field(3.0, ge=1)
    dedup_image: bool = Field(True, description="one row per image (by sha256)")
    dedup_captions: bool = Field(True, description="one row per caption pair and image (matters with "
                                 "dedup_image off)")
    max_images_per_caption: int = Field(20, ge=0, description="distinct photos kept under one Chinese caption, "
                                        "each a pivot; the rest are caption_repeated (0: no cap)")
    where: str | None = Field(None, description=(
        "extra predicate a row must satisfy, in DuckDB SQL (RE2 regexes: regexp_matches(caption_zh, "
        "'\\p{Han}{4}')), run read-only over columns key, url, caption_zh, caption_en (normalised), "
        "caption_zh_raw, caption_en_raw, width, height, original_width, original_height, sha256 and the "
        "manifest's extra columns; e.g. \"original_width >= 256 AND NOT regexp_matches(caption_zh, '广告')\""))
    val_fraction: float = Field(0.05, ge=0, le=1)
    test_fraction: float = Field(0.05, ge=0, le=1)
    split_key: str = Field("key", description="column hashed for the split (e.g. a group id)")
    shard_rows: int = Field(10_000, ge=1)

    def chinese_rule(self) -> script.ChineseRule:
        return script.ChineseRule(self.zh_han_ratio, self.zh_latin_allowance, self.zh_max_hiragana_share,
                                  self.zh_max_kana_hangul_share)

    @field_validator("strip_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [normalise.check_pattern(p) for p in v]

    @field_validator("where")
    @classmethod
    def _one_expression(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        try:
            statements = duckdb.connect().extract_statements(f"SELECT * FROM t WHERE {v}")
        except duckdb.Error as e:
            raise ValueError(f"not a valid SQL predicate: {str(e).splitlines()[0]}") from e
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError("must be a single predicate, not several statements")
        return v


@dataclass
class Snapshot:
    id: str
    url: str
    rows: dict[str, int]
    funnel: list[dict]
    config: dict
    inputs: dict
    shards: dict[str, list[str]] = field(default_factory=dict)
    rejects: str | None = None  # the removed rows and their rules, relative to url (older snapshots: none)
    cached: bool = False

    def split_urls(self, split: str) -> list[str]:
        return [f"{self.url}/{s}" for s in self.shards.get(split, [])]


ZH_COUNTS = ("han", "foreign", "hiragana", "kana_hangul", "words")


def _rules(cfg: FilterConfig) -> list[tuple[str, str, str]]:
    """(rule name, SQL predicate a row must satisfy, what its examples show), in order.

    Over the normalised captions and their script counts (iap.data.script), except where a rule needs
    the caption as it came (blank, file names, spam, mojibake)."""
    zh_rule = cfg.chinese_rule()
    raw = ("caption_zh_raw", "caption_en_raw")
    en_trim = "trim(caption_en)"
    en_words = f"(length({en_trim}) - length(replace({en_trim}, ' ', '')) + 1)"  # single-spaced words
    junk_rules = [("file_name", junk.FILE_NAME, cfg.reject_file_names), ("spam", junk.SPAM, cfg.reject_spam),
                  ("mojibake", junk.MOJIBAKE, cfg.reject_mojibake)]
    return [
        ("missing_caption", " AND ".join(f"coalesce(trim({c}), '') <> ''" for c in raw), "both"),
        ("boilerplate", "coalesce(caption_zh, '') <> '' AND coalesce(caption_en, '') <> ''", "both"),
        ("no_text", " AND ".join(junk.sql_matches(c, script.TEXT) for c in ("caption_zh", "caption_en")), "both"),
        *((name, " AND ".join(f"NOT {junk.sql_matches(c, pattern)}" for c in raw), "both")
          for name, pattern, on in junk_rules if on),
        ("zh_length", f"length(caption_zh) BETWEEN {cfg.zh_min_chars} AND {cfg.zh_max_chars}", "zh"),
        ("en_length", f"{en_words} BETWEEN {cfg.en_min_words} AND {cfg.en_max_words}", "en"),
        *([("zh_kana_hangul", f"NOT {zh_rule.sql_is_japanese_or_korean('zh')}", "zh")]
          if cfg.zh_reject_kana_hangul else []),
        ("zh_not_chinese", zh_rule.sql_is_chinese("zh"), "zh"),
        ("en_not_latin", script.sql_is_latin("caption_en", cfg.en_latin_ratio), "en"),
        ("image_too_small", f"least(original_width, original_height) >= {cfg.min_side}", "image"),
        ("aspect_ratio", f"greatest(original_width, original_height) <= {cfg.max_aspect} * "
                         "least(original_width, original_height)", "image"),
    ]


def _first_failed_rule(cfg: FilterConfig) -> str:
    """One CASE that names the first rule a row fails (NULL when it passes them all)."""
    whens = " ".join(f"WHEN NOT coalesce(({sql}), false) THEN '{name}'" for name, sql, _ in _rules(cfg))
    return f"CASE {whens} END"


def _texts(con, rows: str, cfg: FilterConfig) -> str:
    """The successful rows with normalised (and converted) captions, the originals kept, and script counts."""
    rows = f"SELECT *, caption_zh AS caption_zh_raw, caption AS caption_en_raw, caption AS caption_en FROM ({rows})"
    if cfg.normalise != "none":
        normalise.register_functions(con)
        rows = normalise.sql_normalised(rows, ["caption_zh", "caption_en"],
                                        normalise.strip_patterns(cfg.strip_patterns, cfg.boilerplate))
    converted = "false"
    if cfg.zh_convert == "t2s":  # before the rules: T and S forms of a caption are one caption
        con.create_function("iap_t2s", _t2s, [duckdb.sqltype("VARCHAR")], duckdb.sqltype("VARCHAR"), type="arrow")
        rows = f"SELECT * REPLACE (iap_t2s(caption_zh) AS caption_zh), caption_zh AS caption_zh_source FROM ({rows})"
        converted = "caption_zh IS DISTINCT FROM caption_zh_source"
    counts = ", ".join(script.sql_count_item("caption_zh", "zh", n) for n in ZH_COUNTS)
    return f"SELECT *, {counts}, {converted} AS zh_converted FROM ({rows})"


def _load_rows(con: duckdb.DuckDBPyConnection, shards: Shards, keys_url: str | None, cfg: FilterConfig) -> list[str]:
    """Successful rows into table `rows`, with the first per-row rule each fails already in `removed_by`
    (one vectorised pass); returns the extra (carried-through) columns. Images stay in the download shards:
    a row holds where its image is (`iap_file`, `file_row_number`), and only the write reads the bytes (view
    `images`)."""
    src = _source(shards, keys_url, located=True)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    extras = [c for c in cols if c not in _NOT_EXTRA]
    image = next((c for c in ("jpg", "png", "webp") if c in cols), None)
    if image is None or "iap_key" not in cols:
        raise IapError(f"{shards}: not iap download shards (need parquet output with images and iap_key)")
    con.execute(f"CREATE TEMP VIEW images AS SELECT iap_file, file_row_number, {image} AS image FROM {src}")
    extra_sql = "".join(f", {ident(c)}" for c in extras)
    texts = _texts(con, f"SELECT * FROM {src} WHERE status = 'success'", cfg)
    con.execute(f"""CREATE TEMP TABLE rows AS
        SELECT row_number() OVER () AS row_id, * EXCLUDE (bucket), {_split(cfg)} AS split FROM (
            SELECT iap_key AS key, url, caption_zh, caption_en, caption_zh_raw, caption_en_raw, iap_file,
                   file_row_number, width, height, original_width, original_height, sha256{extra_sql},
                   {_first_failed_rule(cfg)} AS removed_by, {_bucket(cfg, extras)} AS bucket, zh_converted
            FROM ({texts}))""")
    return extras


_NOT_EXTRA = {"iap_key", "caption", "key", "status", "error_message", "exif", "jpg", "png", "webp", "url",
              "caption_zh", "caption_en", "caption_zh_raw", "caption_en_raw", "width", "height", "original_width",
              "original_height", "sha256", "iap_file", "file_row_number"}


def _normalisation(con, cfg: FilterConfig) -> dict:
    """What was changed in the kept rows' text, and with which tool."""
    kept = "FROM rows WHERE removed_by IS NULL"
    out = {}
    if cfg.normalise != "none":
        zh, en = con.execute("SELECT count(*) FILTER (caption_zh IS DISTINCT FROM caption_zh_raw), "
                             f"count(*) FILTER (caption_en IS DISTINCT FROM caption_en_raw) {kept}").fetchone()
        out["normalise"] = {"version": cfg.normalise, "rows_changed": {"caption_zh": zh, "caption_en": en}}
    if cfg.zh_convert != "none":
        from importlib.metadata import version
        n = con.execute(f"SELECT count(*) {kept} AND zh_converted").fetchone()[0]
        out["zh_convert"] = {"rule": cfg.zh_convert, "tool": f"opencc {version('opencc')}", "rows_changed": n}
    return out


def _t2s(captions):
    """Traditional -> Simplified Chinese with OpenCC, over an Arrow array of captions."""
    import opencc
    import pyarrow as pa
    convert = opencc.OpenCC("t2s").convert
    return pa.array([None if c is None else convert(c) for c in captions.to_pylist()], pa.string())


Shards = str | list[str]


def _globs(shards: Shards) -> list[str]:
    return [f"{u.rstrip('/')}/*.parquet" for u in ([shards] if isinstance(shards, str) else shards)]


def _source(shards: Shards, keys_url: str | None = None, located: bool = False) -> str:
    """The download rows as a relation: every shards folder, restricted to the manifest's keys if given;
    `located`: with each row's file and row number in it (`iap_file`, `file_row_number`)."""
    where = ", filename = 'iap_file', file_row_number = true" if located else ""
    rows = f"read_parquet({_globs(shards)}, union_by_name=true{where})"
    if not keys_url:
        return rows
    return f"(SELECT * FROM {rows} WHERE iap_key IN (SELECT key FROM read_parquet('{keys_url}')))"


def _content_fingerprint(con: duckdb.DuckDBPyConnection, shards: Shards, keys_url: str | None = None) -> str:
    """Order-independent hash of the successful rows' content (so re-sharding keeps the id);
    reads metadata columns only."""
    row = "md5_number_lower(concat_ws('\t', iap_key, sha256, caption_zh, caption, original_width, original_height))"
    n, x, s = con.execute(f"SELECT count(*), bit_xor(h), sum(h >> 20) FROM (SELECT {row} AS h "
                          f"FROM {_source(shards, keys_url)} WHERE status = 'success')").fetchone()
    return content_id(f"{n}:{x}:{s}")


def plan_snapshot(shards: Shards, out_url: str, cfg: FilterConfig, keys_url: str | None = None) -> tuple[str, str]:
    """(snapshot id, URL) without filtering anything."""
    sid = snapshot_id(_content_fingerprint(connect(*_globs(shards)), shards, keys_url), cfg)
    return sid, f"{absolute(out_url)}/snapshots/{sid}"


def absolute(url: str) -> str:
    """An output URL that means the same from any working directory: local paths made absolute."""
    return url.rstrip("/") if "://" in url else str(Path(url).resolve())


def _dedup(con, rule: str, partition: str, keep: int = 1) -> int:
    """Remove all but the first `keep` rows (by key) of each group."""
    return con.execute(f"""UPDATE rows SET removed_by = '{rule}' WHERE row_id IN (
        SELECT row_id FROM (SELECT row_id, row_number() OVER (PARTITION BY {partition} ORDER BY key, row_id) AS rn
                            FROM rows WHERE removed_by IS NULL) WHERE rn > {keep})""").fetchone()[0]


def _user_where(con, predicate: str) -> int:
    """Run the user's predicate in a sandbox connection (no file access) over the rows' metadata."""
    meta = con.execute("SELECT * EXCLUDE (iap_file, file_row_number, removed_by, split, zh_converted) FROM rows "
                       "WHERE removed_by IS NULL").to_arrow_table()
    sandbox = duckdb.connect()
    sandbox.register("candidates", meta)
    sandbox.execute("SET enable_external_access = false")
    sandbox.execute("SET lock_configuration = true")
    try:
        keep = sandbox.execute(f"SELECT row_id FROM candidates WHERE {predicate}").to_arrow_table()
    except duckdb.Error as e:
        raise IapError(f"filter 'where': {str(e).splitlines()[0]}") from e
    con.register("kept_by_where", keep)
    return con.execute("UPDATE rows SET removed_by = 'where' WHERE removed_by IS NULL "
                       "AND row_id NOT IN (SELECT row_id FROM kept_by_where)").fetchone()[0]


def _apply_rules(con, cfg: FilterConfig, start: int) -> list[dict]:
    """The funnel: per-row rules (already evaluated at load), then de-duplication and `where`."""
    funnel, remaining = [], start
    by_rule = dict(con.execute("SELECT removed_by, count(*) FROM rows WHERE removed_by IS NOT NULL "
                               "GROUP BY removed_by").fetchall())
    steps = [(name, lambda n=name: by_rule.get(n, 0)) for name, _, _ in _rules(cfg)]
    if cfg.dedup_image:
        steps.append(("duplicate_image", lambda: _dedup(con, "duplicate_image", "sha256")))
    if cfg.dedup_captions:
        steps.append(("duplicate_captions", lambda: _dedup(con, "duplicate_captions",
                                                           "caption_zh, caption_en, sha256")))
    if cfg.max_images_per_caption:
        steps.append(("caption_repeated", lambda: _dedup(con, "caption_repeated", "caption_zh",
                                                         cfg.max_images_per_caption)))
    if cfg.where:
        steps.append(("where", lambda: _user_where(con, cfg.where)))
    for name, run in steps:
        removed = run()
        remaining -= removed
        funnel.append({"stage": "filter", "rule": name, "removed": removed, "remaining": remaining})
    examples = _examples(con, cfg)
    for f in funnel:
        f["examples"] = examples.get(f["rule"], [])
    return funnel


def _examples(con, cfg: FilterConfig) -> dict[str, list[str]]:
    """The first few removed rows of every rule, as a person would recognise them."""
    shows = {name: what for name, _, what in _rules(cfg)} | {"duplicate_image": "zh", "caption_repeated": "zh"}
    rows = con.execute(f"""SELECT removed_by, key, caption_zh_raw, caption_en_raw, original_width, original_height
        FROM rows WHERE removed_by IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY removed_by ORDER BY key, row_id) <= {EXAMPLES}
        ORDER BY removed_by, key, row_id""").fetchall()
    out: dict[str, list[str]] = {}
    for rule, key, zh, en, w, h in rows:
        text = {"zh": zh, "en": en, "image": f"{key} ({w}x{h})"}.get(shows.get(rule, "both"), f"{zh} | {en}")
        out.setdefault(rule, []).append(printable(text))
    return out


def printable(text: str | None, limit: int = 60) -> str:
    """A caption safe to print anywhere: control characters escaped, long text cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def funnel_table(funnel: list[dict]) -> list[dict]:
    """The funnel as flat rows (the Prefect table artifact, the report): examples joined into one cell."""
    return [{"stage": f["stage"], "rule": f["rule"], "removed": f["removed"], "remaining": f["remaining"],
             "examples": " · ".join(f.get("examples", []))} for f in funnel]


def read_rejects(snapshot: Snapshot, per_rule: int) -> list[dict]:
    """Up to `per_rule` removed rows of each filter rule, with the rule (needs a snapshot with rejects)."""
    if not snapshot.rejects:
        raise IapError(f"snapshot {snapshot.url} records no removed rows (made by an earlier iap version)")
    con = connect(snapshot.url)
    return con.execute(f"""SELECT * FROM read_parquet('{snapshot.url}/{snapshot.rejects}')
        QUALIFY row_number() OVER (PARTITION BY removed_by ORDER BY key) <= {int(per_rule)}
        ORDER BY removed_by, key""").to_arrow_table().to_pylist()


def _bucket(cfg: FilterConfig, extras: list[str]) -> str:
    """A number in [0, 1) from an md5 of the split key: a row's split never changes as rows are added."""
    if cfg.split_key not in ["key", "url", "caption_zh", "caption_en", *extras]:
        raise IapError(f"filter 'split_key': column '{cfg.split_key}' not in the shards (have key, url, "
                       f"captions, {', '.join(extras) or 'no extra columns'})")
    column = {"key": "iap_key"}.get(cfg.split_key, cfg.split_key)
    return f"(md5_number_lower(CAST({ident(column)} AS VARCHAR)) % 1000000) / 1000000.0"


def _split(cfg: FilterConfig) -> str:
    return (f"CASE WHEN bucket < {cfg.test_fraction} THEN 'test' "
            f"WHEN bucket < {cfg.test_fraction + cfg.val_fraction} THEN 'val' ELSE 'train' END")


def _write_local(con, folder: Path, cfg: FilterConfig, extras: list[str]) -> dict[str, list[str]]:
    """The kept rows as shards of `shard_rows`, in key order per split. The images are read from the download
    shards here, in one join (its sort spills to local disk past DuckDB's memory limit)."""
    cols = ", ".join(map(ident, CORE_COLUMNS + extras))
    con.execute(f"""COPY (SELECT {cols}, split, shard FROM (
            SELECT *, (row_number() OVER (PARTITION BY split ORDER BY key, row_id) - 1) // {cfg.shard_rows} AS shard
            FROM rows WHERE removed_by IS NULL) JOIN images USING (iap_file, file_row_number)
        ORDER BY split, key, row_id)
        TO '{folder / 'parts'}' (FORMAT parquet, PARTITION_BY (split, shard))""")
    shards: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in sorted((folder / "parts").rglob("*.parquet")):
        split = f.parent.parent.name.split("=", 1)[1]
        shard = int(f.parent.name.split("=", 1)[1])
        name = f"{split}/part-{shard:05d}.parquet"
        (folder / split).mkdir(exist_ok=True)
        f.rename(folder / name)
        shards[split].append(name)
    shutil.rmtree(folder / "parts")
    return shards


def _write_rejects(con, folder: Path) -> str:
    cols = ", ".join(map(ident, REJECT_COLUMNS))
    con.execute(f"""COPY (SELECT {cols} FROM rows WHERE removed_by IS NOT NULL ORDER BY removed_by, key, row_id)
        TO '{folder / REJECTS}' (FORMAT parquet)""")
    return REJECTS


def snapshot_id(content: str, cfg: FilterConfig) -> str:
    return content_id(f"{content}:{cfg.identity()}")


def open_snapshot(url: str) -> Snapshot:
    """A committed snapshot by its URL (OUT/snapshots/<id>); refuses an incomplete one."""
    fs, _, _ = fsspec.get_fs_token_paths(url)
    marker = f"{url.rstrip('/')}/snapshot.json"
    if not fs.exists(marker):
        raise IapError(f"snapshot {url} does not exist or is incomplete (no snapshot.json)")
    with fs.open(marker, "r") as f:
        return Snapshot(**{**json.load(f), "cached": True})


def build_snapshot(shards: Shards, out_url: str, cfg: FilterConfig | None = None,
                   download_funnel: list[dict] | None = None, keys_url: str | None = None,
                   manifest: dict | None = None) -> Snapshot:
    """Filter shards (one folder or several; with keys_url only the manifest's rows) into
    OUT/snapshots/<id>; returns the existing snapshot when the id is known. DuckDB keeps its default memory
    limit (image shards need room) and spills to a local temporary folder past it."""
    cfg = cfg or FilterConfig()
    with tempfile.TemporaryDirectory(prefix="iap-snapshot-") as spill:
        con = connect(*_globs(shards), out_url)
        con.execute(f"SET temp_directory = {quote(spill)}")
        try:
            return _build(con, shards, out_url, cfg, download_funnel, keys_url, manifest)
        finally:
            con.close()


def _build(con, shards: Shards, out_url: str, cfg: FilterConfig, download_funnel: list[dict] | None,
           keys_url: str | None, manifest: dict | None) -> Snapshot:
    content = _content_fingerprint(con, shards, keys_url)
    sid = snapshot_id(content, cfg)
    final_url = f"{absolute(out_url)}/snapshots/{sid}"
    fs, _, _ = fsspec.get_fs_token_paths(final_url)
    if fs.exists(f"{final_url}/snapshot.json"):
        return open_snapshot(final_url)
    extras = _load_rows(con, shards, keys_url, cfg)
    start = con.execute("SELECT count(*) FROM rows").fetchone()[0]
    funnel = list(download_funnel or []) + _apply_rules(con, cfg, start)
    rows = dict(con.execute("SELECT split, count(*) FROM rows WHERE removed_by IS NULL GROUP BY split").fetchall())
    rows = {s: rows.get(s, 0) for s in SPLITS} | {"total": sum(rows.values())}
    if rows["total"] == 0:
        raise IapError(_nothing_survived(funnel, start))
    with staged_folder(final_url, "snapshot.json") as folder:  # visible only when complete
        shards = _write_local(con, folder, cfg, extras)
        snap = Snapshot(id=sid, url=final_url, rows=rows, funnel=funnel, config=cfg.model_dump(mode="json"),
                        inputs={"shards": shards, "keys_url": keys_url, "content_fingerprint": content,
                                "rows_in": start, **_normalisation(con, cfg),
                                **({"manifest": manifest} if manifest else {})}, shards=shards,
                        rejects=_write_rejects(con, folder))
        meta = {k: v for k, v in asdict(snap).items() if k != "cached"}
        (folder / "snapshot.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return snap


# The fields (options --filter-FIELD / --download-FIELD / --columns-FIELD) that change what each rule removes.
RULE_FIELDS = {
    "boilerplate": ("filter", ["boilerplate", "strip_patterns"]), "file_name": ("filter", ["reject_file_names"]),
    "spam": ("filter", ["reject_spam"]), "mojibake": ("filter", ["reject_mojibake"]),
    "zh_length": ("filter", ["zh_min_chars", "zh_max_chars"]), "en_length": ("filter", ["en_min_words", "en_max_words"]),
    "zh_kana_hangul": ("filter", ["zh_reject_kana_hangul", "zh_max_hiragana_share", "zh_max_kana_hangul_share"]),
    "zh_not_chinese": ("filter", ["zh_han_ratio", "zh_latin_allowance"]), "en_not_latin": ("filter", ["en_latin_ratio"]),
    "image_too_small": ("filter", ["min_side"]), "aspect_ratio": ("filter", ["max_aspect"]),
    "duplicate_image": ("filter", ["dedup_image"]), "duplicate_captions": ("filter", ["dedup_captions"]),
    "caption_repeated": ("filter", ["max_images_per_caption"]), "where": ("filter", ["where"]),
    "too_small": ("download", ["min_image_size"]), "too_large": ("download", ["max_pixels", "max_bytes"]),
    "timeout": ("download", ["timeout"]), "private_address": ("download", ["refuse_private_addresses"]),
    "bad_url": ("columns", ["url_schemes"]),
}
UNREACHABLE = ("http_error", "network_error", "other")


def rule_options(rule: str) -> list[str]:
    """The command-line options that change what `rule` removes (none for rules about the data alone)."""
    section, fields = RULE_FIELDS.get(rule, ("", []))
    return [f"--{section}-{f.replace('_', '-')}" for f in fields]


def _nothing_survived(funnel: list[dict], start: int) -> str:
    """Why nothing is left: each rule that removed rows, its count and the options that change it."""
    removed = sorted((f for f in funnel if f.get("removed")), key=lambda f: -f["removed"])
    steps = "; ".join(f"{f['rule']} removed {f['removed']}" + (f" ({', '.join(rule_options(f['rule']))})"
                                                                 if rule_options(f["rule"]) else "")
                      for f in removed) or "no rule removed any"
    if start == 0:
        unreachable = any(f["rule"] in UNREACHABLE for f in removed)
        hint = (" Check that the manifest's URLs are reachable from this machine (the download's failure "
                "examples name the errors)." if unreachable else "")
        return f"no manifest row was downloaded: {steps}. Nothing was written.{hint}"
    return (f"0 of {start} downloaded rows survived the filter: {steps}. Nothing was written; loosen those "
            "rules or check the data (iap data ... --explain 5 lists removed rows).")
