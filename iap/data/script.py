"""What counts as Chinese in a caption, in one place, for SQL (DuckDB's RE2) and Python (`regex`).

Both engines read the same Unicode script classes (`\\p{Han}`, `\\p{Hiragana}`, ...), so each class
below is one pattern string used by both, and a test checks that they count alike.

- Han: the `\\p{Han}` script (ideographs of every extension, radicals, 々 and 〇). A Chinese caption
  needs at least one.
- Neutral: punctuation, symbols, emoji, digits and spaces count for nothing, so "“福”",
  "春——夏——秋——冬" and "！！！" are judged by their letters alone.
- Foreign: letters of any script but Han and Latin (kana, Hangul, Cyrillic, ...).
- Latin words: runs of Latin letters and digits that start with a letter ("8k" and "2023年" are not
  words); a free allowance of them is how people write Chinese ("一只猫, masterpiece, 8k",
  "iPhone 14 手机壳").
- Japanese and Korean: judged by share, not by one character: hiragana is Japanese grammar (を, が,
  です), while a lone の ("日系の少女风") or a katakana or Hangul brand name ("ロート", "라네즈") is how
  Chinese listings are written. Half-width katakana is katakana.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

HAN = r"\p{Han}"
FOREIGN = r"[^\P{L}\p{Han}\p{Latin}]"  # a letter, neither Han nor Latin
HIRAGANA = r"\p{Hiragana}"
KANA_HANGUL = r"[\p{Hiragana}\p{Katakana}\p{Hangul}]"
LATIN_WORD = r"(^|[^\p{Latin}0-9])\p{Latin}"  # the first letter of each word (RE2 has no look-behind)
LATIN = r"\p{Latin}"
NON_LATIN = r"[^\P{L}\p{Latin}]"  # a letter of any other script
TEXT = r"[\p{L}\p{Han}]"  # a letter or an ideograph: what a caption needs to be a caption

COUNTS = {"han": HAN, "foreign": FOREIGN, "hiragana": HIRAGANA, "kana_hangul": KANA_HANGUL,
          "words": LATIN_WORD, "latin": LATIN, "nonlatin": NON_LATIN}


def sql_count(col: str, pattern: str) -> str:
    """How many times a pattern occurs in a column, in DuckDB SQL (a cheap scan first: most counts are 0)."""
    if pattern == HAN:  # in nearly every Chinese caption: deleting the rest is faster than extracting
        return f"length(regexp_replace({col}, '[^{HAN}]', '', 'g'))"
    return (f"CASE WHEN regexp_matches({col}, '{pattern}') THEN len(regexp_extract_all({col}, '{pattern}')) "
            "ELSE 0 END")


def sql_count_item(col: str, prefix: str, name: str) -> str:
    """One count of COUNTS as the select item `prefix_<name>`."""
    return f"{sql_count(col, COUNTS[name])} AS {prefix}_{name}"


@dataclass(frozen=True)
class ChineseRule:
    """The Chinese rule's thresholds (FilterConfig.chinese_rule(): its zh_* fields)."""

    han_ratio: float
    latin_allowance: int
    max_hiragana_share: float
    max_kana_hangul_share: float

    def sql_is_chinese(self, p: str) -> str:
        """Over the counts of sql_counts(col, p): Han makes up han_ratio of the caption's letters."""
        words = f"greatest({p}_words - {self.latin_allowance}, 0)"
        return f"({p}_han > 0 AND {p}_han >= {self.han_ratio} * ({p}_han + {p}_foreign + {words}))"

    def sql_is_japanese_or_korean(self, p: str) -> str:
        letters = f"({p}_han + {p}_foreign)"
        return (f"(({p}_hiragana >= 2 AND {p}_hiragana >= {self.max_hiragana_share} * {letters}) OR "
                f"({p}_kana_hangul > 0 AND {p}_kana_hangul >= {self.max_kana_hangul_share} * {letters}))")

    def is_chinese(self, text: str) -> bool:
        """The same rule as sql_is_chinese, for one string."""
        c = counts(text)
        words = max(c["words"] - self.latin_allowance, 0)
        return c["han"] > 0 and c["han"] >= self.han_ratio * (c["han"] + c["foreign"] + words)

    def is_japanese_or_korean(self, text: str) -> bool:
        c = counts(text)
        letters = c["han"] + c["foreign"]
        return ((c["hiragana"] >= 2 and c["hiragana"] >= self.max_hiragana_share * letters)
                or (c["kana_hangul"] > 0 and c["kana_hangul"] >= self.max_kana_hangul_share * letters))


def sql_is_latin(col: str, ratio: float) -> str:
    """English: Latin letters make up `ratio` of the caption's letters (emoji and punctuation are neutral).
    Counted only for the few captions with letters of another script."""
    latin = f"len(regexp_extract_all({col}, '{LATIN}'))"
    other = f"len(regexp_extract_all({col}, '{NON_LATIN}'))"
    return (f"(CASE WHEN NOT regexp_matches({col}, '{LATIN}') THEN false "  # CASE: OR would count every row
            f"WHEN NOT regexp_matches({col}, '{NON_LATIN}') THEN true "
            f"ELSE {latin} >= {ratio} * ({latin} + {other}) END)")


def is_latin(text: str, ratio: float) -> bool:
    c = counts(text)
    return c["latin"] > 0 and c["latin"] >= ratio * (c["latin"] + c["nonlatin"])


_COMPILED = {name: regex.compile(p) for name, p in COUNTS.items()}


def counts(text: str) -> dict[str, int]:
    """The counts sql_counts computes, for one string."""
    return {name: sum(1 for _ in p.finditer(text)) for name, p in _COMPILED.items()}
