"""Web captions as text: undo markup and encoding noise before the filter's rules judge them.

Scraped alt text and listing titles carry HTML tags and entities, full-width Latin, zero-width and
control characters, the U+FFFD of a bad decode, word-segmented Chinese, and platform artifacts (link
placeholders, emoticon codes, @mentions, #topics#, "点击查看大图"). `sql_normalise` is one DuckDB
expression that turns a caption into what a person reads; the snapshot stores that and keeps the
original beside it. A caption that only such noise made up ends empty: the filter removes it as
`boilerplate`.

Steps, in order: entities unescaped, two levels (scraped text is often escaped twice: &amp;nbsp;; the
common ones in SQL, the rest in Python); tags, comments and
terminal escapes removed; full-width Latin letters and digits and half-width katakana folded to their
NFKC form (ＳＡＬＥ -> SALE, ｶﾀｶﾅ -> カタカナ; full-width punctuation，！？ stays: it is how Chinese is
punctuated); zero-width, soft-hyphen, U+FFFD and control characters removed; the strip patterns
removed; whitespace collapsed and trimmed; spaces between Han characters removed (segmented text:
一 辆 长途汽车 -> 一辆长途汽车).

Patterns are RE2, DuckDB's regex dialect (that of --filter-where too). Every step but the strip
patterns runs only on the captions that need it (a cheap scan decides).

Versioned: "v1" is the behaviour above. A change to it is a new version, hence a new filter config
and a new snapshot id; old versions stay for old snapshots.
"""

from __future__ import annotations

import html
import re
import unicodedata

import duckdb

VERSIONS = ("none", "v1")

# Platform artifacts: Weibo's link and video placeholders, emoticon codes ([呵呵], [doge]), @mentions,
# #topic# markers. A FilterConfig field, so a corpus can add its own.
DEFAULT_ARTIFACTS = [
    r"[OL]?网页链接",
    r"L\S{0,24}的微博视频",
    r"(^|\s)L视频",
    r"\[[\p{Han}A-Za-z]{1,8}\]",
    r"@[\p{L}\p{N}_-]{1,30}[:：]?",
    r"#[^#\s]{1,40}#",
]
# Boilerplate of gallery, shop and forum pages, not of the photo (matched case-insensitively).
DEFAULT_BOILERPLATE = [
    "点击查看大图", "点击查看原图", "点击放大", "查看大图", "查看原图", "图片来源于网络", "图片来源网络",
    "图片来自网络", "如有侵权请联系删除", "转发微博", "分享图片", "暂无图片", "图片加载中",
    "click to enlarge", "click here", "image not found", "no image available", "view larger image",
]

_COMMON_ENTITIES = [("&nbsp;", " "), ("&quot;", '"'), ("&#39;", "'"), ("&apos;", "'"), ("&lt;", "<"),
                    ("&gt;", ">"), ("&amp;", "&")]  # &amp; last: one level per pass
_ENTITY = r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
_MARKUP = r"<!--.*?-->|</?[A-Za-z][^<>]{0,500}>|\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b"
_SPACE = r"[\s\p{Z}\x{0B}\x{85}]"
_MESSY_SPACE = rf"^{_SPACE}|{_SPACE}$|{_SPACE}{{2}}|[^ \P{{Z}}]|[\t\n\r\x{{0B}}\x{{0C}}\x{{85}}]"
_CJK = r"[\p{Han}\x{3000}-\x{303F}\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF20}\x{FF3B}-\x{FF40}\x{FF5B}-\x{FF65}]"


def _fold_table() -> tuple[str, str, str]:
    """(from, to, removed) for DuckDB's translate(): one character to one, the rest deleted."""
    src, dst = [], []
    for cp in range(0xFF01, 0xFFF0):
        ch = chr(cp)
        if cp <= 0xFF5E and not ch.isalnum():
            continue  # full-width punctuation stays
        folded = unicodedata.normalize("NFKD" if 0xFF9E <= cp <= 0xFF9F else "NFKC", ch)
        if len(folded) == 1 and folded != ch:
            src.append(ch)
            dst.append(folded)
    gone = [0x00AD, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065), 0xFEFF, 0xFFFD,
            *(c for c in range(0x00, 0x20) if chr(c) not in "\t\n\r\x0b\x0c"), *range(0x7F, 0x85), *range(0x86, 0xA0)]
    return "".join(src), "".join(dst), "".join(map(chr, gone))


_FROM, _TO, _GONE = _fold_table()
_NEEDS_FOLD = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(set(_FROM + _GONE))) + "]"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def strip_patterns(artifacts: list[str], boilerplate: list[str]) -> list[str]:
    """RE2 patterns to remove, in order: each artifact pattern, then one alternation of the boilerplate
    phrases (the longest first). Separate replaces: one alternation of them all outgrows RE2's DFA and
    runs ~5x slower on captions that match."""
    phrases = sorted(boilerplate, key=len, reverse=True)
    return [*artifacts, *(["|".join(f"(?i:{re.escape(p)})" for p in phrases)] if phrases else [])]


def check_pattern(pattern: str) -> str:
    """A strip pattern as a config gives it; one message for one RE2 does not compile."""
    try:
        duckdb.connect().execute(f"SELECT regexp_matches('', {sql_literal(pattern)})").fetchone()
    except duckdb.Error as e:
        raise ValueError(f"not a valid RE2 regular expression ({str(e).splitlines()[0]}): {pattern!r}") from e
    return pattern


def _when(test: str, col: str, then: str) -> str:
    return f"CASE WHEN {test} THEN {then} ELSE {col} END"


def sql_normalise_steps(col: str, strip: list[str]) -> list[str]:
    """The normalisation as successive DuckDB expressions over `col`, each applied to the one before
    (run them as nested `SELECT * REPLACE (...)`; needs register_functions on the connection)."""
    folded = f"translate({col}, {sql_literal(_FROM + _GONE)}, {sql_literal(_TO)})"
    gap = f"'({_CJK}) ({_CJK})', '\\1\\2', 'g'"  # twice: a match consumes the character the next gap needs
    common = col
    for entity, char in _COMMON_ENTITIES:
        common = f"replace({common}, '{entity}', {sql_literal(char)})"
    steps = [
        _when(f"regexp_matches({col}, '{_ENTITY}')", col, common),  # most entities, without leaving SQL
        _when(f"regexp_matches({col}, '{_ENTITY}')", col, f"iap_unescape({col})"),  # the rest, and a second level
        _when(f"regexp_matches({col}, '[<\\x1b]')", col, f"regexp_replace({col}, '{_MARKUP}', ' ', 'g')"),
        _when(f"regexp_matches({col}, '{_NEEDS_FOLD}')", col, f"nfc_normalize({folded})"),
        *(f"regexp_replace({col}, {sql_literal(p)}, ' ', 'g')" for p in strip),
        _when(f"regexp_matches({col}, '{_MESSY_SPACE}')", col, f"trim(regexp_replace({col}, '{_SPACE}+', ' ', 'g'))"),
        _when(f"regexp_matches({col}, '{_CJK} {_CJK}')", col, f"regexp_replace(regexp_replace({col}, {gap}), {gap})"),
    ]
    return steps


def sql_normalised(relation: str, columns: list[str], strip: list[str]) -> str:
    """A query over `relation` whose `columns` are normalised in place."""
    per_column = {c: sql_normalise_steps(f'"{c}"', strip) for c in columns}
    query = relation
    for i in range(len(per_column[columns[0]])):
        items = ", ".join(f'{steps[i]} AS "{c}"' for c, steps in per_column.items())
        query = f"SELECT * REPLACE ({items}) FROM ({query})"
    return query


def _unescape(captions):
    import pyarrow as pa
    return pa.array([None if c is None else html.unescape(c) for c in captions.to_pylist()], pa.string())


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    con.create_function("iap_unescape", _unescape, [duckdb.sqltype("VARCHAR")], duckdb.sqltype("VARCHAR"),
                        type="arrow")


def normalise(text: str | None, artifacts: list[str] = DEFAULT_ARTIFACTS,
              boilerplate: list[str] = DEFAULT_BOILERPLATE) -> str | None:
    """One caption through the very SQL the filter runs (for tests, benches and a user's checks)."""
    con = duckdb.connect()
    register_functions(con)
    query = sql_normalised("SELECT ?::VARCHAR AS t", ["t"], strip_patterns(artifacts, boilerplate))
    return con.execute(query, [text]).fetchone()[0]
