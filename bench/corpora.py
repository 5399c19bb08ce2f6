"""The data stage on a realistic mixed manifest: what each rule removes, before and after issues 13 and 26.

Builds a 1,000-row manifest served on 127.0.0.1 with what real Chinese corpora hold (exact duplicate
rows and repeated keys, Japanese and Korean captions, Traditional captions, mixed Chinese + English-tag
prompts, English in the Chinese column, 404s, corrupt files, tiny images, a decompression bomb) and what
scraped web captions hold (markup and entities, zero-width characters, segmented text, leading spaces,
Weibo artifacts, a lone の, katakana and Hangul brand names, emoji, a gallery of photos sharing one
caption; punctuation-only, full-width-Latin, file-name, spam, boilerplate and mojibake captions,
half-width Japanese), runs `run_data` with the default rules (Traditional -> Simplified on) and prints
the funnel, then a confusion table of the rows that reached the filter: this version's rules against
the rules before issue 26 (re-stated below in Python, as the SQL they were) on the same download.
Also: MT throughput of the tiny MarianMT preset, and the projected cost per 1M captions of a real
opus-mt-zh-en (its config) from FLOPs.

    python bench/corpora.py [--rows 1000] [--mt-rows 2000] [--quick]
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from iap import shapes
from iap.data.download import DownloadConfig
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig
from iap.shapes.synth import serve, write_synth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers
from tests.helpers import free_port  # noqa: E402
from tests.test_corpora import _bomb_png  # noqa: E402

KANA = ["赤い丸と青い背景", "青い背景の上の大きな赤い円", "猫がソファで寝ている", "白い背景の小さな三角形"]
HANGUL = ["파란 배경의 빨간 원", "흰색 배경 위의 작은 삼각형", "소파 위의 고양이"]
TAGS = [", masterpiece, best quality", ", 8k, highly detailed", ", trending on artstation", " 4k wallpaper"]
# web-caption kinds (issue 26): how each turns a clean row into a scraped one; keep = it should stay
WEB_KEEP = {
    "markup and entities": lambda r, i: {"caption_zh": f"<b>{r['caption_zh']}</b>&nbsp;&quot;新品&quot;"},
    "zero-width and U+FFFD": lambda r, i: {"caption_zh": r["caption_zh"][:2] + "\u200b\ufffd" + r["caption_zh"][2:]},
    "segmented text": lambda r, i: {"caption_zh": " ".join(r["caption_zh"])},
    "leading spaces": lambda r, i: {"caption_zh": "   " + r["caption_zh"]},
    "Weibo artifacts": lambda r, i: {"caption_zh": f"@小明: {r['caption_zh']}[哈哈] #晒图# O网页链接"},
    "a lone の": lambda r, i: {"caption_zh": r["caption_zh"].replace("的", "の", 1)},
    "katakana / Hangul brand": lambda r, i: {"caption_zh": ("ロート " if i % 2 else "라네즈 ") + r["caption_zh"]},
    "Chinese quotes and dashes": lambda r, i: {"caption_zh": f"“{r['caption_zh']}”——"},
    "English with emoji": lambda r, i: {"caption_en": r["caption_en"] + " 🎄🎁🎅"},
}
WEB_DROP = {
    "punctuation only": lambda r, i: {"caption_zh": "！！！……"},
    "full-width Latin only": lambda r, i: {"caption_zh": "ＳＵＭＭＥＲ　ＳＡＬＥ　２０２４"},
    "file name": lambda r, i: {"caption_zh": f"微信图片_20210315{i:06d}.jpg"},
    "spam": lambda r, i: {"caption_zh": r["caption_zh"] + " 加微信 abc12345678"},
    "boilerplate": lambda r, i: {"caption_zh": "点击查看大图"},
    "mojibake": lambda r, i: {"caption_zh": "锟斤拷" + r["caption_zh"]},
    "half-width Japanese": lambda r, i: {"caption_zh": "ｶﾀｶﾅのﾃｷｽﾄです"},
}
NOISE = re.compile(r"[<&\u200b\ufffd]|网页链接|\[哈哈\]|#晒图#|@小明|^\s|\s$|[^\x00-\x7f] [^\x00-\x7f] ")
KEEP = {"clean", "Traditional", "mixed zh + English tags", "gallery: photos sharing a caption", *WEB_KEEP}


def mixed_manifest(folder: Path, rows: int, port: int) -> tuple[Path, dict[str, int]]:
    """A manifest of `rows` rows: ~60% clean, the rest each kind of trouble; returns it and the kind counts."""
    import opencc
    rng = random.Random(0)
    base = f"http://127.0.0.1:{port}"
    clean = pq.read_table(write_synth(folder, int(rows * 1.4), seed=0, base_url=base, image_px=160)).to_pylist()
    (folder / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 20)
    shapes.render(shapes.samples(1, 1)[0], 8).save(folder / "images" / "tiny.png")
    _bomb_png(folder / "images" / "bomb.png")
    t2s = opencc.OpenCC("s2t")
    good, kinds, out = clean[:int(rows * 0.6)], {}, []
    spare = clean[len(good):]

    def add(kind: str, new: list[dict]) -> None:
        kinds[kind] = kinds.get(kind, 0) + len(new)
        out.extend({**r, "broken": kind} for r in new)
    add("clean", good)
    add("exact duplicate row", [dict(r) for r in rng.sample(good, rows // 25)])
    add("repeated key, other caption", [{**r, "caption_en": r["caption_en"] + " again"} for r in rng.sample(good, rows // 50)])
    take = iter(spare)
    add("Japanese (kana)", [{**next(take), "caption_zh": rng.choice(KANA)} for _ in range(rows // 25)])
    add("Korean (Hangul)", [{**next(take), "caption_zh": rng.choice(HANGUL)} for _ in range(rows // 50)])
    add("Traditional", [{**(r := next(take)), "caption_zh": t2s.convert(r["caption_zh"])} for _ in range(rows // 25)])
    add("mixed zh + English tags", [{**(r := next(take)), "caption_zh": r["caption_zh"] + rng.choice(TAGS)}
                                    for _ in range(rows // 20)])
    add("English in caption_zh", [{**(r := next(take)), "caption_zh": r["caption_en"]} for _ in range(rows // 40)])
    for kind, path, n in (("404", "missing.jpg", rows // 50), ("corrupt file", "corrupt.jpg", rows // 100),
                          ("tiny image", "tiny.png", rows // 100), ("decompression bomb", "bomb.png", 3)):
        add(kind, [{**(r := next(take)), "key": f"{kind}-{i}", "url": f"{base}/images/{path}"} for i in range(n)])
    for kind, change in {**WEB_KEEP, **WEB_DROP}.items():
        add(kind, [{**(r := next(take)), **change(r, i)} for i in range(rows // 100)])
    # a gallery's alt text over distinct photos, English machine-translated (so the pair repeats too)
    gallery = {"caption_zh": good[0]["caption_zh"] + "，西湖边拍摄", "caption_en": good[0]["caption_en"] + " at west lake"}
    add("gallery: photos sharing a caption", [{**next(take), **gallery} for _ in range(15)])
    manifest = folder / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(out), manifest)
    return manifest, kinds


def _ranges(*pairs: tuple[int, int], negate: bool = False) -> re.Pattern:
    body = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in pairs)
    return re.compile(f"[{'^' if negate else ''}{body}]")


_OLD_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F), (0x3000, 0x303F),
                   (0xFF00, 0xFFEF))  # with CJK punctuation and every full-width form
_OLD_HAN = _ranges(*_OLD_HAN_RANGES)
_OLD_OTHER = _ranges(*_OLD_HAN_RANGES, (0x00, 0x7F), negate=True)
_OLD_KANA_HANGUL = _ranges((0x3040, 0x30FF), (0x31F0, 0x31FF), (0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
_OLD_WORD = re.compile(r"\b[A-Za-z][A-Za-z0-9-]*", re.ASCII)  # RE2's \b is ASCII


def before_issue_26(rows: list[dict]) -> set[str]:
    """The keys the rules before issue 26 kept (default FilterConfig then, t2s on), in their order:
    blank, lengths, any kana/Hangul, Han + CJK punctuation + full-width forms share, ASCII share by
    2 * chars - bytes, image shape, dedup by image and by caption pair."""
    import opencc
    t2s, kept, images, pairs = opencc.OpenCC("t2s").convert, set(), set(), set()
    for r in sorted(rows, key=lambda r: r["iap_key"]):
        zh, en = t2s(r["caption_zh"] or ""), r["caption"] or ""
        if not zh.strip() or not en.strip() or not 2 <= len(zh) <= 256:
            continue
        if not 2 <= en.strip().count(" ") + 1 <= 77 or _OLD_KANA_HANGUL.search(zh):
            continue
        han, other = len(_OLD_HAN.findall(zh)), len(_OLD_OTHER.findall(zh))
        if not (han > 0 and han >= 0.5 * (han + other + max(len(_OLD_WORD.findall(zh)) - 3, 0))):
            continue
        if 2 * len(en) - len(en.encode()) < 0.8 * len(en):
            continue
        w, h = r["original_width"], r["original_height"]
        if max(w, h) > 3 * min(w, h) or r["sha256"] in images or (zh, en) in pairs:
            continue
        images.add(r["sha256"])
        pairs.add((zh, en))
        kept.add(r["iap_key"])
    return kept


def confusion(kinds: dict[str, str], keep: set[str], downloaded: set[str]) -> dict[str, int]:
    """Rows that reached the filter: kept / dropped, against what they should be (KEEP kinds stay)."""
    out = {"kept correctly": 0, "dropped wrongly": 0, "kept wrongly": 0, "dropped correctly": 0}
    for key in downloaded:
        should = kinds[key] in KEEP
        out[("kept " if key in keep else "dropped ") + ("correctly" if should == (key in keep) else "wrongly")] += 1
    return out


def old_zh_rule(zh: str) -> bool:
    """The rule before issue 13: characters at U+0800 and above make up half the caption (kana and Hangul
    count as Chinese, English tags do not)."""
    return (len(zh.encode()) - len(zh)) / 2 >= 0.5 * len(zh)


def bench_mt(rows: int) -> tuple[float, float]:
    from iap.models.translator import Translator
    from iap.presets.names import TINY_MT, resolve_translator
    from iap.system.runtime import CPU
    texts = [s.caption_zh for s in shapes.samples(rows, 5)]
    t = Translator(TINY_MT, CPU, folder=resolve_translator(TINY_MT))
    t.translate(texts[:64])
    start = time.perf_counter()
    t.translate(texts, batch_size=64)
    return rows / (time.perf_counter() - start), len(texts[0])


def marian_flops_per_caption(src_tokens: int = 20, tgt_tokens: int = 24) -> float:
    """opus-mt-zh-en's config (d_model 512, 6+6 layers, FFN 2048, vocab 65001): 2 FLOPs per weight per token,
    encoder over the source, decoder (self + cross attention + FFN + output projection) per generated token."""
    d, ffn, vocab, layers = 512, 2048, 65001, 6
    enc = layers * (4 * d * d + 2 * d * ffn)
    dec = layers * (8 * d * d + 2 * d * ffn) + d * vocab
    return 2 * (enc * src_tokens + dec * tgt_tokens)


def snapshot_rows(snapshot) -> list[dict]:
    files = [u for split in ("train", "val", "test") for u in snapshot.split_urls(split)]
    return pa.concat_tables(pq.read_table(f, columns=["key", "caption_zh"]) for f in files).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--mt-rows", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 rows, 50 translations (seconds: the test suite)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.mt_rows = 200, 50
    with tempfile.TemporaryDirectory() as tmp:
        tmp, port = Path(tmp), free_port()
        manifest, kinds = mixed_manifest(tmp / "web", args.rows, port)
        table = pq.read_table(manifest)
        server = serve(tmp / "web", port)
        try:
            start = time.perf_counter()
            report, snapshot = run_data(str(manifest), str(tmp / "out"), DownloadConfig(timeout=5),
                                        FilterConfig(zh_convert="t2s", val_fraction=0, test_fraction=0))
            seconds = time.perf_counter() - start
        finally:
            server.shutdown()
        globs = [f"{p}/*.parquet" for p in report.parts]
        shards = duckdb.connect().sql(f"""SELECT iap_key, status, caption_zh, caption, sha256, original_width,
            original_height FROM read_parquet({globs}, union_by_name=true)""").to_arrow_table().to_pylist()
        stored_now = {r["key"]: r["caption_zh"] for r in snapshot_rows(snapshot)}
        kept_now = set(stored_now)
    print(f"\nmixed manifest: {table.num_rows} rows ({', '.join(f'{k} {v}' for k, v in kinds.items())})")
    print(f"\n{'stage':10} {'rule':24} {'removed':>8} {'remaining':>10}  examples")
    for f in snapshot.funnel:
        print(f"{f['stage']:10} {f['rule']:24} {f['removed']:8} {f['remaining']:10}  {' · '.join(f.get('examples', []))[:70]}")
    success = [r for r in shards if r["status"] == "success"]
    kind_of: dict[str, str] = {}
    for r in table.to_pylist():  # a key's first row is the one the manifest stage keeps
        kind_of.setdefault(r["key"], r["broken"])
    downloaded = {r["iap_key"] for r in success}
    before = before_issue_26(success)
    print(f"\nthe {len(downloaded)} rows that reached the filter:   kept correctly  dropped wrongly  kept wrongly  "
          "dropped correctly")
    for name, keep in (("rules before issue 26", before), ("this version", kept_now)):
        c = confusion(kind_of, keep, downloaded)
        print(f"  {name:34} {c['kept correctly']:14} {c['dropped wrongly']:16} {c['kept wrongly']:13} "
              f"{c['dropped correctly']:18}")
    raw = {r["iap_key"]: r["caption_zh"] for r in success}
    print(f"  kept captions stored with markup, entities, invisible characters, artifacts or stray spaces: "
          f"before {sum(bool(NOISE.search(raw[k])) for k in before)}, now "
          f"{sum(bool(NOISE.search(c)) for c in stored_now.values())}")
    print(f"\n{'kind':36} {'should':>7} {'rows':>5} {'kept before':>12} {'kept now':>9}")
    for kind in kinds:
        keys = {k for k in downloaded if kind_of[k] == kind}
        if keys:
            print(f"{kind:36} {'keep' if kind in KEEP else 'drop':>7} {len(keys):5} {len(keys & before):12} "
                  f"{len(keys & kept_now):9}")
    old_kept_zh = sum(old_zh_rule(z) for z in table["caption_zh"].to_pylist())
    print(f"\nsnapshot: {snapshot.rows['total']} rows in {seconds:.1f} s; Traditional captions converted: "
          f"{snapshot.inputs.get('zh_convert', {}).get('rows_changed')}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    print("before issue 13, on the same rows: the run stopped at the first duplicate key ('keys are not unique');"
          f" without duplicates, the old Chinese rule kept {old_kept_zh} of {table.num_rows} captions "
          f"(kana and Hangul passed: {sum(old_zh_rule(z) for z in KANA + HANGUL)}/{len(KANA + HANGUL)} samples; "
          f"tagged prompts failed: {sum(not old_zh_rule(r['caption_zh']) for r in table.to_pylist() if r['broken'] == 'mixed zh + English tags')}"
          f"/{kinds['mixed zh + English tags']}), min_image_size 0 let the 8x8 images in, and the bomb was decoded")
    rate, chars = bench_mt(args.mt_rows)
    flops = marian_flops_per_caption()
    print(f"\nMT, tiny MarianMT preset on this CPU: {rate:,.0f} captions/s ({args.mt_rows} shapes captions, "
          f"{chars} characters, batch 64, greedy)")
    for name, tflops in (("CPU, 2 cores (~0.1 TFLOP/s)", 0.1), ("H100 bf16 at 30% of 990 TFLOP/s", 297)):
        print(f"  opus-mt-zh-en, 1M captions (20 source / 24 target tokens): {flops * 1e6 / 1e15:.2f} PFLOP -> "
              f"{flops * 1e6 / (tflops * 1e12) / 60:,.1f} min on {name} (compute bound; decoding is latency-bound, "
              "so batch widely)")


if __name__ == "__main__":
    main()
