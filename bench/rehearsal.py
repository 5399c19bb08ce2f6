"""Rehearsal of the real job: the iap-train flow with the `full` deployment's own parameters
(deployments/prefect.yaml) at SD-1.5 shapes, on random weights built from the real configs.

Base: UNet 320/640/1280/1280 (860M), VAE at 512 px, CLIP-L-shaped text tower (77 x 768), saved as a
diffusers folder. Chinese encoder: a 12-layer, 768-wide RoBERTa-shaped BertModel with a 21,128-entry
Chinese character vocabulary, saved as pytorch_model.bin with a tokenizer config that has no
model_max_length, as hfl/chinese-roberta-wwm-ext is published. Data: shapes-world triples at 512 px served
on 127.0.0.1. Overridden for a CPU: steps, rows, the train batch (the rows are fewer than full's 64), the
held-out fraction and the evaluation size; everything else is full's.

    python bench/rehearsal.py [--rows 24] [--steps 2] [--out DIR] [--quick]
    python bench/rehearsal.py --gpu-check     # on a CUDA machine: the same on the GPU, with GPU memory

Prints per stage: wall time, samples/s, peak RSS of this process (img2dataset workers are separate
processes), peak GPU memory, and the cache bytes per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# each rehearsal starts cold: its own Prefect state and task results (nothing cached from an earlier one)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="iap-rehearsal-prefect-")
os.environ["IAP_RESULTS_DIR"] = tempfile.mkdtemp(prefix="iap-rehearsal-results-")

SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, norm_num_groups=32)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")


def write_sd15(folder: Path) -> Path:
    """A Stable Diffusion 1.5-shaped pipeline folder with random weights (real component classes)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from bench.train_step import SD15_UNET
    from iap import shapes
    from iap.models.vocab import write_clip_bpe
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_bpe(Path(tmp), shapes.english_words())
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_roberta(folder: Path) -> Path:
    """hfl/chinese-roberta-wwm-ext's shape and packaging: BertModel 12 x 768, 21,128 tokens, .bin weights."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from bench.train_step import BERT_768
    from iap import shapes
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(shapes.chinese_characters()))
    filler = [chr(c) for c in range(0x4E00, 0x9FFF) if chr(c) not in chars]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars
    vocab += filler[:BERT_768["vocab_size"] - len(vocab)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(**BERT_768, pad_token_id=tokenizer.pad_token_id))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # legacy packaging, loaded with weights_only
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    return folder


def full_parameters() -> dict:
    import yaml
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == "full")["parameters"]


def run(args) -> dict:
    import torch

    from flows.train import iap_train
    from iap.shapes.synth import serve, write_synth
    from iap.system import profile
    from tests.helpers import free_port
    out = Path(args.out)
    shutil.rmtree(out / "run", ignore_errors=True)  # the models are kept; the run starts from the manifest
    if args.quick:  # the same flow and parameters on the tiny preset at 64 px: seconds, for the test suite
        from iap.presets.tiny import write_tiny
        tiny, px = write_tiny(out / "models" / "tiny"), 64
        base, zh = tiny / "base", tiny / "zh_encoder"
    else:
        base, zh, px = write_sd15(out / "models" / "sd15"), write_roberta(out / "models" / "roberta-zh"), 512
    (out / "models" / "used.json").write_text(json.dumps({"base": str(base), "zh_encoder": str(zh), "image_px": px}))
    port = free_port()
    manifest = write_synth(out / "synth", args.rows, seed=0, base_url=f"http://127.0.0.1:{port}", image_px=px)
    server = serve(out / "synth", port)
    params = full_parameters()
    params.update(out=str(out / "run"), base=str(base), zh_encoder=str(zh), manifest=str(manifest))
    if args.quick:
        params["download"] |= {"image_size": px, "min_image_size": px // 2, "processes_count": 1, "thread_count": 8}
    params["train"] |= {"steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": args.steps,
                        "warmup_steps": 1, "log_every": 1}
    params["filter"] = {"val_fraction": 0.25, "test_fraction": 0.0}
    params["evaluate"] = {"samples": args.samples, "steps": 2, "pairs": 8}
    started = time.perf_counter()
    try:
        result = iap_train(**params)
    finally:
        server.shutdown()
    cache = json.loads(Path(result.cache, "cache.json").read_text())
    samples = sum(s["rows"] for v in cache["shards"].values() for s in v)
    return {"device": str(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
            "shapes": "tiny-preset shapes (--quick)" if args.quick else "SD-1.5 shapes",
            "overrides": {k: params[k] for k in ("train", "filter", "evaluate")}, "rows": args.rows,
            "seconds_total": round(time.perf_counter() - started, 1), "stages": profile.summary(),
            "cache_bytes_per_sample": cache["bytes"] / max(samples, 1), "status": result.status}


def print_table(report: dict) -> None:
    print(f"\nrehearsal of iap-train/full at {report['shapes']} on {report['device']}, {report['rows']} rows "
          f"({report['seconds_total']} s in all; overrides {json.dumps(report['overrides'])})")
    print(f"{'stage':<12}{'wall s':>9}{'samples/s':>11}{'peak RSS GB':>13}{'peak GPU GB':>13}")
    for s in report["stages"]:
        rate = f"{s['samples'] / s['seconds']:.2f}" if s["samples"] and s["seconds"] else "-"
        print(f"{s['stage']:<12}{s['seconds']:>9.1f}{rate:>11}{s['peak_rss'] / 1e9:>13.2f}{s['peak_gpu'] / 1e9:>13.2f}")
    print(f"cache bytes per sample: {report['cache_bytes_per_sample']:,.0f}; registry: {report['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=24, help="shapes-world triples at 512 px")
    parser.add_argument("--steps", type=int, default=2, help="training steps (full: 20000)")
    parser.add_argument("--batch-size", type=int, default=8, help="global train batch (full: 64)")
    parser.add_argument("--samples", type=int, default=2, help="held-out prompts drawn in evaluation")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "iap-rehearsal"), help="work folder")
    parser.add_argument("--gpu-check", action="store_true", help="the GPU self-check: requires CUDA")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--quick", action="store_true", help="the tiny preset at 64 px instead of SD-1.5 shapes "
                                                              "(seconds: the test suite)")
    args = parser.parse_args()
    import torch
    if args.gpu_check and not torch.cuda.is_available():
        print("GPU self-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check.")
        return
    report = run(args)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
