"""Web captions as they really are (issue 26): normalised before the rules, Han counted as Han, every
distinct photo kept up to a cap, junk removed under its own reason, and examples of what each rule removed.

The captions are our own wording, shaped like scraped alt text, listing titles and Weibo posts."""

from __future__ import annotations

import hashlib
import random

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iap.data import script
from iap.data.normalise import normalise
from iap.data.snapshot import FilterConfig, build_snapshot, read_rejects

OPEN = FilterConfig(val_fraction=0, test_fraction=0)


def _shards(folder, rows: list[dict]) -> str:
    """img2dataset-shaped shards (what the filter reads); each row: zh, en and optionally image (its hash)."""
    n = len(rows)
    folder.mkdir(parents=True)
    images = [str(r.get("image", i)) for i, r in enumerate(rows)]
    pq.write_table(pa.table({
        "iap_key": [f"k{i:04d}" for i in range(n)], "url": [f"http://x/{i}.jpg" for i in range(n)],
        "caption_zh": [r["zh"] for r in rows], "caption": [r.get("en", "a photo of a scene") for r in rows],
        "jpg": [b"\xff\xd8" + image.encode() for image in images], "width": [64] * n, "height": [64] * n,
        "original_width": [512] * n, "original_height": [512] * n,
        "sha256": [hashlib.sha256(image.encode()).hexdigest() for image in images],
        "status": ["success"] * n, "error_message": pa.nulls(n, pa.string())}), folder / "00000.parquet")
    return str(folder)


def _snapshot(tmp_path, rows: list[dict], cfg: FilterConfig = OPEN):
    snap = build_snapshot(_shards(tmp_path / "shards", rows), str(tmp_path / "out"), cfg)
    kept = pq.read_table(f"{snap.url}/{snap.shards['train'][0]}").to_pylist() if snap.shards["train"] else []
    return snap, kept, {f["rule"]: f for f in snap.funnel}


def test_distinct_photos_sharing_a_caption_are_kept_up_to_the_cap(tmp_path):
    """A gallery's alt text repeats over its photos; each photo is another pivot for the same caption."""
    gallery = [{"zh": "西湖边的断桥残雪", "en": "the broken bridge at west lake in snow", "image": f"lake-{i}"}
               for i in range(6)]
    same_photo_twice = [{"zh": "雨后的古镇小巷", "en": "an old town lane after rain", "image": "lane"}] * 2
    rows = gallery + same_photo_twice
    snap, kept, funnel = _snapshot(tmp_path, rows, OPEN.model_copy(update={"max_images_per_caption": 4}))
    assert sum(r["caption_zh"] == "西湖边的断桥残雪" for r in kept) == 4
    assert funnel["caption_repeated"]["removed"] == 2 and funnel["duplicate_image"]["removed"] == 1
    assert snap.rows["total"] == len(rows) - 3 == len(kept)
    _, kept, funnel = _snapshot(tmp_path / "default", rows)  # the default cap (20) keeps the whole gallery
    assert sum(r["caption_zh"] == "西湖边的断桥残雪" for r in kept) == 6 and funnel["caption_repeated"]["removed"] == 0


NORMALISED = {  # caption as scraped -> as stored
    "手工<b>红糖</b>姜茶&nbsp;400g": "手工红糖姜茶 400g",
    "法国&quot;小黑瓶&quot;精华 &amp;amp; 面霜": '法国"小黑瓶"精华 & 面霜',
    "春天的\u200b樱花\ufeff\ufffd盛开": "春天的樱花盛开",
    "一 只 白色 的 小狗 趴 在 草地 上": "一只白色的小狗趴在草地上",
    "   \t湖边的日落  ": "湖边的日落",
    "ＬＥＤ台灯　护眼款": "LED台灯护眼款",  # the ideographic space is a space between Han characters
    "今天的晚霞太美了[哈哈] O网页链接 @旅行日记: #晚霞#": "今天的晚霞太美了",
    "夜景\x1b[31m红色\x1b[0m\r\n灯笼\x00": "夜景红色灯笼",
    "路口的 ｼｮｯﾌﾟ 大招牌很醒目": "路口的 ショップ 大招牌很醒目",  # half-width katakana folded; kana-Han spaces stay
}


def test_markup_entities_invisible_characters_and_segmented_text_are_normalised(tmp_path):
    for raw, clean in NORMALISED.items():
        assert normalise(raw) == clean, raw
    rows = [{"zh": raw, "en": f"&quot;caption&quot;   number {i}<br>", "image": i} for i, raw in enumerate(NORMALISED)]
    snap, kept, _ = _snapshot(tmp_path, rows, OPEN.model_copy(update={"zh_reject_kana_hangul": False}))
    by_raw = {r["caption_zh_raw"]: r for r in kept}
    assert {raw: r["caption_zh"] for raw, r in by_raw.items()} == NORMALISED  # the original kept beside
    assert {r["caption_en"] for r in kept} == {f'"caption" number {i}' for i in range(len(NORMALISED))}
    assert snap.inputs["normalise"] == {"version": "v1", "rows_changed": {"caption_zh": 9, "caption_en": 9}}
    raw = FilterConfig(normalise="none", val_fraction=0, test_fraction=0)
    assert FilterConfig().identity() != raw.identity()  # a changed normalisation is a new snapshot id


JUNK = {  # caption_zh -> the rule that removes it
    "！！！……": "no_text",
    "ＳＵＭＭＥＲ　ＳＡＬＥ": "zh_not_chinese",  # full-width Latin only: SUMMER SALE
    "微信图片_20210315093012.jpg": "file_name",
    "IMG_4021": "file_name",
    "正品代购 加微信 abc123456 详询": "spam",
    "新款连衣裙 www.example-shop.com 包邮": "spam",
    "点击查看大图": "boilerplate",
    "<br/>&nbsp;": "boilerplate",
    "锟斤拷锟斤拷的风景": "mojibake",
}


def test_junk_captions_are_removed_under_their_own_reasons_with_examples(tmp_path):
    rows = [{"zh": zh, "image": i} for i, zh in enumerate(JUNK)] + [{"zh": "山间的小木屋", "image": "cabin"}]
    snap, kept, funnel = _snapshot(tmp_path, rows)
    assert [r["caption_zh"] for r in kept] == ["山间的小木屋"]
    expected: dict[str, int] = {}
    for rule in JUNK.values():
        expected[rule] = expected.get(rule, 0) + 1
    assert {rule: f["removed"] for rule, f in funnel.items() if f["removed"]} == expected
    assert funnel["spam"]["examples"] == ["正品代购 加微信 abc123456 详询 | a photo of a scene",
                                          "新款连衣裙 www.example-shop.com 包邮 | a photo of a scene"]
    assert funnel["file_name"]["examples"][0].startswith("微信图片_")
    rejects = read_rejects(snap, per_rule=10)
    assert sorted((r["removed_by"], r["caption_zh_raw"]) for r in rejects) == sorted((v, k) for k, v in JUNK.items())
    assert snap.rows["total"] + sum(f["removed"] for f in snap.funnel) == len(rows)  # every row accounted for


KEPT_AS_CHINESE = [
    "“福”",  # General Punctuation is how Chinese quotes
    "春——夏——秋——冬",
    "日系の少女风连衣裙",  # の used as 的
    "日本进口 ロート 乐敦眼药水",  # a katakana brand name
    "韩国 라네즈 兰芝 睡眠面膜",  # a Hangul brand name
    "新年快乐🎉🧧",  # emoji are neutral
    "\U00030001\U00030002 罕见字",  # CJK Extension G
    "⺮⼀部首",  # radicals
]
NOT_CHINESE = {
    "ｶﾀｶﾅのﾃｷｽﾄです": "zh_kana_hangul",  # half-width katakana is katakana
    "青い空と白い雲がきれいです": "zh_kana_hangul",
    "바다 위의 작은 배 船": "zh_kana_hangul",
}


def test_han_is_han_and_kana_or_hangul_reject_by_share(tmp_path):
    rows = [{"zh": zh, "image": i} for i, zh in enumerate([*KEPT_AS_CHINESE, *NOT_CHINESE])]
    rows.append({"zh": "圣诞树下的礼物", "en": "Presents under the tree 🎄🎁🎅", "image": "gifts"})
    _, kept, funnel = _snapshot(tmp_path, rows)
    assert {r["caption_zh_raw"] for r in kept} == {*KEPT_AS_CHINESE, "圣诞树下的礼物"}
    assert funnel["zh_kana_hangul"]["removed"] == 3 and funnel["en_not_latin"]["removed"] == 0
    rule = OPEN.chinese_rule()
    assert script.counts("ｶﾀｶﾅ")["kana_hangul"] == 4 and script.counts("\U00030001⺮")["han"] == 2
    assert rule.is_japanese_or_korean("ｶﾀｶﾅのﾃｷｽﾄです") and not rule.is_japanese_or_korean("日系の少女风")


ALPHABET = ["猫", "山", "\U00030001", "⺮", "の", "が", "カ", "ｶ", "한", "국", "Д", "ж", "a", "Z", "é", "1", "8",
            " ", "，", "。", "“", "”", "—", "!", "-", "🎉", "ー", "々", "ก"]


def _sql_verdicts(con, texts: list[str], rule: script.ChineseRule) -> list[tuple]:
    counts = ", ".join(script.sql_count_item("caption_zh", "zh", n) for n in ("han", "foreign", "hiragana",
                                                                               "kana_hangul", "words"))
    return con.execute(f"""SELECT {rule.sql_is_chinese('zh')}, {rule.sql_is_japanese_or_korean('zh')},
        {script.sql_is_latin('caption_zh', 0.8)}, zh_han, zh_foreign, zh_hiragana, zh_kana_hangul, zh_words
        FROM (SELECT *, {counts} FROM (SELECT unnest(?::VARCHAR[]) AS caption_zh, generate_subscripts(?, 1) AS i))
        ORDER BY i""", [texts, texts]).fetchall()


def test_the_sql_and_python_rules_agree_on_mixed_scripts():
    rng = random.Random(0)
    texts = ["", "iPhone 14 Pro Max 手机壳", "猫iPhone", "8k 猫", *KEPT_AS_CHINESE, *NOT_CHINESE,
             *("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 14))) for _ in range(2000))]
    con = duckdb.connect()
    for rule in (OPEN.chinese_rule(), script.ChineseRule(0.8, 0, 0.1, 0.3), script.ChineseRule(0.2, 10, 0.5, 0.9)):
        python = []
        for t in texts:
            c = script.counts(t)
            python.append((rule.is_chinese(t), rule.is_japanese_or_korean(t), script.is_latin(t, 0.8),
                           c["han"], c["foreign"], c["hiragana"], c["kana_hangul"], c["words"]))
        sql = _sql_verdicts(con, texts, rule)
        assert [(t, v) for t, v in zip(texts, sql, strict=True)] == [(t, v) for t, v in zip(texts, python, strict=True)]


def test_strip_patterns_are_checked_and_extendable():
    with pytest.raises(ValueError, match="not a valid RE2"):
        FilterConfig(strip_patterns=["(unclosed"])
    cfg = FilterConfig(strip_patterns=[r"【[^】]*】"], boilerplate=["包邮"])
    assert normalise("【限时特价】纯棉T恤 包邮", cfg.strip_patterns, cfg.boilerplate) == "纯棉T恤"
    assert FilterConfig.model_fields["where"].description.startswith("extra predicate a row must satisfy, "
                                                                     "in DuckDB SQL")
    from iap.cli.options import build_configs
    configs = build_configs(("filter",), None, {"filter__strip_patterns": '["a{1,8}", "b"]',
                                                "filter__boilerplate": "包邮,秒杀"})
    assert configs["filter"].strip_patterns == ["a{1,8}", "b"] and configs["filter"].boilerplate == ["包邮", "秒杀"]


def test_the_where_predicate_sees_normalised_and_raw_captions(tmp_path):
    rows = [{"zh": "山间的<b>小木屋</b>", "image": 1}, {"zh": "湖边的小船", "image": 2}, {"zh": "草原上的马群", "image": 3}]
    where = r"NOT regexp_matches(caption_zh, '\p{Han}{2}船') AND NOT regexp_matches(caption_zh_raw, '<b>')"
    _, kept, funnel = _snapshot(tmp_path, rows, OPEN.model_copy(update={"where": where}))
    assert [r["caption_zh"] for r in kept] == ["草原上的马群"] and funnel["where"]["removed"] == 2


@pytest.mark.e2e
def test_iap_data_shows_what_each_rule_removed(served, tmp_path):
    """The funnel names example captions per rule, and --explain lists removed rows as they came."""
    import os
    import subprocess
    import sys
    rows = pq.read_table(served).to_pylist()[:8]
    junk = {5: "限时特价 加微信 abc12345678", 6: "IMG_20230101_1200.JPG", 7: "<p>点击查看大图</p>"}
    rows = [{**r, "caption_zh": junk.get(i, r["caption_zh"])} for i, r in enumerate(rows)]
    manifest = tmp_path / "web.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    r = subprocess.run([sys.executable, "-m", "iap", "data", "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                        "--download-image-size", "32", "--download-min-image-size", "16", "--filter-val-fraction", "0",
                        "--filter-test-fraction", "0", "--engine", "local", "--explain", "2"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "220"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    funnel, _, rejects = r.stdout.partition("removed rows (up to 2 per rule)")
    assert "examples removed" in funnel and "限时特价 加微信 abc12345678 |" in funnel
    for rule, caption in (("spam", junk[5]), ("file_name", junk[6]), ("boilerplate", junk[7])):
        line = next(line for line in rejects.splitlines() if f" {rule} " in line)
        assert caption in line, (rule, line)
    snapshot = next((tmp_path / "o" / "snapshots").glob("*/snapshot.json"))
    assert pq.read_table(snapshot.parent / "rejects.parquet").num_rows == 3
