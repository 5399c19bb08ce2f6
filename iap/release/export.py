"""Export a checkpoint as a standard diffusers Stable Diffusion folder with the Chinese encoder.

Plain `StableDiffusionPipeline.from_pretrained(OUT)` loads it with no project code: the text
encoder and tokenizer are ordinary transformers classes (e.g. BertModel + BertTokenizer, or AltCLIPTextModel
when the encoder learned a projection to the UNet's width). The base's
UNet, VAE and scheduler are copied file for file (default safetensors variant), never loaded: the
export holds no second copy of the base in memory and its UNet is byte-identical to the base's. An SDXL
base exports as a `StableDiffusionXLPipeline` folder: the two Chinese CLIP towers as `text_encoder` and
`text_encoder_2`, the Chinese tokenizer as `tokenizer` and `tokenizer_2`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from iap.errors import IapError
from iap.evaluation.metrics import Metrics
from iap.models.chinese import load_text_model
from iap.models.hub import is_local, revision
from iap.models.xl import TOWERS, DualTower, is_towers_folder
from iap.system.storage import is_remote, staged_folder
from iap.training.checkpoint import check_lineage, fetch_checkpoint, read_checkpoint_meta

CARD = """---
{{{{ card_data }}}}
---
# Chinese Stable Diffusion (IAP)

The base model `{base}` with its English CLIP text encoder(s) replaced by a Chinese encoder trained
with IAP ("images as pivots"): only the Chinese encoder was trained, so that its cross-attention
outputs over the frozen UNet's image queries match the English ones. UNet, VAE and scheduler are
the base model's, unchanged.

```python
from diffusers import {pipeline}
pipe = {pipeline}.from_pretrained("{out}")
image = pipe("蓝色背景上的一个大红色圆形").images[0]
```

- checkpoint: `{checkpoint}` (step {step}, encoder sha256 `{sha}`)
- base model fingerprint: `{fingerprint}`
- license: {license_note}
- training config: see `iap_training.json`
{results}"""
# Held-out metrics published in the card's model-index (the rest stay in the run's report)
CARD_METRICS = ("heldout_loss", "retrieval_top1", "retrieval_top5", "colour_accuracy", "kid_zh_vs_en", "clip_score")

FROZEN = ("unet", "vae", "scheduler")
# configs and the default weights variant (single file or shards + index); not .fp16 / .non_ema / .bin
KEEP = re.compile(r"(.*config\.json|diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors(\.index\.json)?)$")


def base_folder(source: str) -> Path:
    """The base's files on disk: a local folder, or the hub snapshot at the pinned revision (configs and
    default safetensors only; already cached when the base was loaded)."""
    if is_local(source):
        if not Path(source, "model_index.json").exists():
            raise IapError(f"could not load base model '{source}': no model_index.json")
        return Path(source)
    from huggingface_hub import snapshot_download
    patterns = ["model_index.json", "README.md"] + [f"{sub}/*" for sub in FROZEN]  # README: the base's license
    try:
        return Path(snapshot_download(source, revision=revision(source), allow_patterns=patterns))
    except Exception as e:
        raise IapError(f"could not fetch base model '{source}': {str(e).splitlines()[0]}") from e


def _library_class(obj) -> list[str]:
    """How model_index.json names a component: [library, class], as diffusers writes it."""
    return [type(obj).__module__.split(".")[0], type(obj).__name__]


def export_pipeline(checkpoint: str | Path, base_source: str, out: str | Path, metrics: Metrics | None = None,
                    dataset: str | None = None) -> Path | str:
    """The pipeline folder at `out` (local or remote), visible only when complete: a local one appears by a
    rename; a remote one is uploaded with model_index.json (what from_pretrained reads first) last. `metrics`
    (held-out, on the snapshot `dataset`) go into the model card."""
    with staged_folder(out, "model_index.json") as tmp:
        _build(checkpoint, base_source, tmp, out, metrics.trained if metrics else {}, dataset)
    return str(out) if is_remote(out) else Path(out)


def card_dataset(snapshot_url: str) -> str:
    """How the card names the held-out data: the snapshot's id."""
    return f"iap snapshot {str(snapshot_url).rstrip('/').rsplit('/', 1)[-1]} (val split)"


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an exported pipeline folder to a Hub model repo (created if missing); its URL. A remote export
    is fetched first. Credentials are huggingface_hub's own (HF_TOKEN or `hf auth login`), never logged."""
    from huggingface_hub import HfApi

    from iap.system.storage import fetch_folder
    local = fetch_folder(folder, "model_index.json", "pipelines")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(local), repo_type="model",
                                   commit_message="IAP export (iap export --push-to-hub)")
    except Exception as e:  # noqa: BLE001 - the hub's errors (auth, network, name) are one message
        raise IapError(f"could not push {folder} to the Hub repo '{repo_id}': {str(e).splitlines()[0]}") from e
    return str(getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}"))


def publish(pipeline_dir: str | Path, repo_id: str, status: str) -> str:
    """The pipeline's push to the Hub after registration (iap-train's `push_to_hub`): only a promoted checkpoint
    is published; the line that says what happened."""
    if status != "promoted":
        return f"not pushed to {repo_id}: the registry did not promote this checkpoint ({status})"
    return f"pushed to {push_to_hub(pipeline_dir, repo_id)}"


def base_license(base: Path) -> str | None:
    """The license in the base's own model card (README.md front matter), if it has one."""
    from huggingface_hub import ModelCard
    try:
        if not (base / "README.md").read_text(encoding="utf-8").startswith("---"):
            return None  # no front matter (the Hub parser would log a warning on every export)
        return ModelCard.load(base / "README.md").data.license
    except Exception:  # noqa: BLE001 - no card, or not one the Hub parser reads: no license to inherit
        return None


def model_card(base_source: str, base: Path, out, checkpoint, meta: dict, fingerprint: str, pipeline: str,
               metrics: dict, dataset: str | None) -> str:
    """The README.md a Hub model repo shows: the card data (base_model, license, language, pipeline_tag, the
    held-out results) and how to load it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    license_id = base_license(base)
    results = [EvalResult(task_type="text-to-image", dataset_type="iap-snapshot", dataset_name=dataset or "held-out",
                          metric_type=k, metric_value=float(metrics[k]))
               for k in CARD_METRICS if isinstance(metrics.get(k), (int, float))]
    data = ModelCardData(base_model=None if is_local(base_source) else base_source, license=license_id,
                         language=["zh"], library_name="diffusers", pipeline_tag="text-to-image",
                         tags=["stable-diffusion", "text-to-image", "iap", "chinese"],
                         model_name=f"IAP Chinese encoder for {base_source}" if results else None,
                         eval_results=results or None)
    table = "".join(f"| {r.metric_type} | {r.metric_value:.4g} |\n" for r in results)
    text = CARD.format(pipeline=pipeline, base=base_source, out=out, checkpoint=checkpoint, step=meta["step"],
                       sha=meta["encoder_sha256"], fingerprint=fingerprint,
                       license_note=f"`{license_id}`, the base model's" if license_id else
                       "the base model's (its card names none: check its terms before publishing)",
                       results=f"\n## Held-out results\n\n| metric | value |\n|---|---|\n{table}" if table else "")
    return ModelCard.from_template(data, template_str=text).content


def _build(checkpoint: str | Path, base_source: str, tmp: Path, out: str | Path, metrics: dict,
           dataset: str | None) -> None:
    local = fetch_checkpoint(checkpoint)
    meta = read_checkpoint_meta(local)
    fingerprint = check_lineage(meta, base_source, f"checkpoint {checkpoint}")
    tokenizer = AutoTokenizer.from_pretrained(local / "encoder")
    base = base_folder(base_source)
    for sub in FROZEN:
        (tmp / sub).mkdir(parents=True)
        for f in sorted(Path(base, sub).iterdir()):
            if KEEP.match(f.name):
                shutil.copyfile(f, tmp / sub / f.name)  # follows the hub cache's symlinks
    index = json.loads(Path(base, "model_index.json").read_text())
    if is_towers_folder(local / "encoder"):  # SDXL: two towers, both read through the Chinese tokenizer
        towers = DualTower.from_folder(local / "encoder")
        towers.export(tmp)
        for name, tok in zip(TOWERS, ("tokenizer", "tokenizer_2"), strict=True):
            tokenizer.save_pretrained(tmp / tok)
            index |= {name: _library_class(getattr(towers, name)), tok: _library_class(tokenizer)}
    else:
        encoder = load_text_model(str(local / "encoder"), use_safetensors=True)
        encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        index |= {"text_encoder": _library_class(encoder), "tokenizer": _library_class(tokenizer),
                  "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    pipeline = "StableDiffusionXLPipeline" if "text_encoder_2" in index else "StableDiffusionPipeline"
    (tmp / "README.md").write_text(model_card(base_source, Path(base), out, checkpoint, meta, fingerprint, pipeline,
                                              metrics, dataset))
    (tmp / "iap_training.json").write_text(json.dumps(
        {"config": meta["config"], "lineage": meta.get("lineage", {}), "step": meta["step"],
         "encoder_sha256": meta["encoder_sha256"]}, indent=2))
