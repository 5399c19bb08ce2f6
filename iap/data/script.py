"""What counts as Chinese in a caption, in one place, as SQL (DuckDB's RE2) and as Python.

A caption is Chinese when Han characters (and CJK punctuation) make up at least a share of it, where
the rest is every other non-ASCII character plus the Latin words beyond a free allowance: mixed
prompts ("一只猫, masterpiece, 8k") and brand names ("iPhone 手机壳") are how people write Chinese.
Kana and Hangul mark Japanese and Korean, which share Han characters but are not Chinese.
"""

from __future__ import annotations

import re

HAN = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F)]
CJK_PUNCTUATION = [(0x3000, 0x303F), (0xFF00, 0xFFEF)]  # 、。「」 and full-width forms ，！？
KANA_HANGUL = [(0x3040, 0x30FF), (0x31F0, 0x31FF), (0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)]
ASCII = [(0x00, 0x7F)]
LATIN_WORD = r"\b[A-Za-z][A-Za-z0-9-]*"  # a number ("2023年", "8k") is not a word


def _sql_class(ranges: list[tuple[int, int]], negate: bool = False) -> str:
    body = "".join(f"\\x{{{a:04X}}}-\\x{{{b:04X}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _py_class(ranges: list[tuple[int, int]], negate: bool = False) -> str:
    body = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def sql_is_chinese(col: str, ratio: float, latin_allowance: int) -> str:
    """A DuckDB predicate: the column's Han share (see the module doc) is at least `ratio`."""
    han = f"length(regexp_replace({col}, '{_sql_class(HAN + CJK_PUNCTUATION, negate=True)}', '', 'g'))"
    other = f"length(regexp_replace({col}, '{_sql_class(HAN + CJK_PUNCTUATION + ASCII)}', '', 'g'))"
    words = f"len(regexp_extract_all({col}, '{LATIN_WORD}'))"
    return f"({han} > 0 AND {han} >= {ratio} * ({han} + {other} + greatest({words} - {latin_allowance}, 0)))"


def sql_has_kana_hangul(col: str) -> str:
    return f"regexp_matches({col}, '{_sql_class(KANA_HANGUL)}')"


_HAN = re.compile(_py_class(HAN + CJK_PUNCTUATION))
_OTHER = re.compile(f"{_py_class(HAN + CJK_PUNCTUATION + ASCII, negate=True)}")
_KANA_HANGUL = re.compile(_py_class(KANA_HANGUL))
_WORD = re.compile(LATIN_WORD)


def is_chinese(text: str, ratio: float, latin_allowance: int) -> bool:
    """The same rule as sql_is_chinese, for one string."""
    han = len(_HAN.findall(text))
    other = len(_OTHER.findall(text))
    words = len(_WORD.findall(text))
    return han > 0 and han >= ratio * (han + other + max(words - latin_allowance, 0))


def has_kana_hangul(text: str) -> bool:
    return bool(_KANA_HANGUL.search(text))
