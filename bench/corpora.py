"""The data stage on a realistic mixed manifest: what each rule removes, before and after issue 13.

Builds a 1,000-row manifest served on 127.0.0.1 with what real Chinese corpora hold (exact duplicate
rows and repeated keys, Japanese and Korean captions, Traditional captions, mixed Chinese + English-tag
prompts, English in the Chinese column, 404s, corrupt files, tiny images, a decompression bomb), runs
`run_data` with the default rules (Traditional -> Simplified on) and prints the funnel next to what the
previous rules did with the same rows. Also: MT throughput of the tiny MarianMT preset, and the
projected cost per 1M captions of a real opus-mt-zh-en (its config) from FLOPs.

    python bench/corpora.py [--rows 1000] [--mt-rows 2000]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from iap import shapes
from iap.data.download import DownloadConfig
from iap.data.pipeline import run_data
from iap.data.snapshot import FilterConfig
from iap.shapes.synth import serve, write_synth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers
from tests.conftest import free_port  # noqa: E402
from tests.test_corpora import _bomb_png  # noqa: E402

KANA = ["赤い丸と青い背景", "青い背景の上の大きな赤い円", "猫がソファで寝ている", "白い背景の小さな三角形"]
HANGUL = ["파란 배경의 빨간 원", "흰색 배경 위의 작은 삼각형", "소파 위의 고양이"]
TAGS = [", masterpiece, best quality", ", 8k, highly detailed", ", trending on artstation", " 4k wallpaper"]


def mixed_manifest(folder: Path, rows: int, port: int) -> tuple[Path, dict[str, int]]:
    """A manifest of `rows` rows: ~60% clean, the rest each kind of trouble; returns it and the kind counts."""
    import opencc
    rng = random.Random(0)
    base = f"http://127.0.0.1:{port}"
    clean = pq.read_table(write_synth(folder, int(rows * 0.85), seed=0, base_url=base, image_px=160)).to_pylist()
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
    manifest = folder / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(out), manifest)
    return manifest, kinds


def old_zh_rule(zh: str) -> bool:
    """The rule before issue 13: characters at U+0800 and above make up half the caption (kana and Hangul
    count as Chinese, English tags do not)."""
    return (len(zh.encode()) - len(zh)) / 2 >= 0.5 * len(zh)


def bench_mt(rows: int) -> tuple[float, float]:
    from iap.models.translator import TINY_MT, Translator
    from iap.runtime import CPU
    texts = [s.caption_zh for s in shapes.samples(rows, 5)]
    t = Translator(TINY_MT, CPU)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--mt-rows", type=int, default=2000)
    args = parser.parse_args()
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
    print(f"\nmixed manifest: {table.num_rows} rows ({', '.join(f'{k} {v}' for k, v in kinds.items())})")
    print(f"\n{'stage':10} {'rule':24} {'removed':>8} {'remaining':>10}")
    for f in snapshot.funnel:
        print(f"{f['stage']:10} {f['rule']:24} {f['removed']:8} {f['remaining']:10}")
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
