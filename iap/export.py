"""Export a checkpoint as a standard diffusers Stable Diffusion folder with the Chinese encoder.

Plain `StableDiffusionPipeline.from_pretrained(OUT)` loads it with no project code: the text
encoder and tokenizer are ordinary transformers classes (e.g. BertModel + BertTokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from diffusers import StableDiffusionPipeline
from transformers import AutoModel, AutoTokenizer

from iap.checkpoint import check_lineage, read_checkpoint_meta
from iap.errors import IapError

CARD = """---
library_name: diffusers
pipeline_tag: text-to-image
language: [zh]
tags: [stable-diffusion, iap, chinese]
---
# Chinese Stable Diffusion (IAP)

The base model `{base}` with its English CLIP text encoder replaced by a Chinese encoder trained
with IAP ("images as pivots"): only the Chinese encoder was trained, so that its cross-attention
outputs over the frozen UNet's image queries match the English ones. UNet, VAE and scheduler are
the base model's, unchanged.

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{out}")
image = pipe("蓝色背景上的一个大红色圆形").images[0]
```

- checkpoint: `{checkpoint}` (step {step}, encoder sha256 `{sha}`)
- base model fingerprint: `{fingerprint}`
- training config: see `iap_training.json`
"""


def export_pipeline(checkpoint: str | Path, base_source: str, out: str | Path) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    meta = read_checkpoint_meta(checkpoint)
    fingerprint = check_lineage(meta, base_source, f"checkpoint {checkpoint}")
    encoder = AutoModel.from_pretrained(checkpoint / "encoder", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "encoder")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            base_source, text_encoder=encoder, tokenizer=tokenizer, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise IapError(f"could not load base model '{base_source}': {str(e).splitlines()[0]}") from e
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "README.md").write_text(CARD.format(base=base_source, out=out, checkpoint=checkpoint, step=meta["step"],
                                               sha=meta["encoder_sha256"], fingerprint=fingerprint))
    (tmp / "iap_training.json").write_text(json.dumps(
        {"config": meta["config"], "lineage": meta.get("lineage", {}), "step": meta["step"],
         "encoder_sha256": meta["encoder_sha256"]}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out
