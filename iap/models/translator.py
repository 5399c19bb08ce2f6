"""Chinese -> English machine translation for manifests without English captions.

Any `transformers` seq2seq model works (MarianMT such as Helsinki-NLP/opus-mt-zh-en, NLLB with
src_lang zho_Hans): given as a hub id (pinned to the revision it resolves to) or a local folder.
A preset name (`preset:tiny-mt`, iap.presets) is resolved to its folder by the caller.
"""

from __future__ import annotations

import torch

from iap.errors import IapError
from iap.models.hub import is_local, revision
from iap.system.runtime import Runtime, place


class Translator:
    """A seq2seq model and its tokenizer, placed on the runtime; `translate` is batched greedy decoding."""

    def __init__(self, source: str, runtime: Runtime, max_length: int = 128, folder: str | None = None):
        """`source` names the model in messages; `folder`, when given, is where it is (a resolved preset)."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        self.source, self.runtime, self.max_length = source, runtime, max_length
        folder = folder or source
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, revision=revision(str(folder)))
            model = AutoModelForSeq2SeqLM.from_pretrained(folder, revision=revision(str(folder)))
        except (OSError, ValueError) as e:
            raise IapError(f"translation model '{source}': cannot load it as a transformers seq2seq model "
                           f"({str(e).splitlines()[0]})") from e
        self.model = place(model.eval().requires_grad_(False), runtime)
        self.max_new_tokens = min(max_length, model.generation_config.max_length or max_length)

    @torch.inference_mode()
    def translate(self, texts: list[str], batch_size: int = 64) -> list[str]:
        """English for each text, in order. Batches hold texts of similar length (less padding)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length).to(self.runtime.device)
            ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False)
            for i, text in zip(idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out


def fingerprint(source: str) -> str:
    """What identifies the translations a model gives: the preset name, hub id@commit, or the folder's content."""
    if source.startswith("preset:"):
        return source  # a preset is written deterministically: its name is its content
    if not is_local(source):
        return f"hub:{source}@{revision(source)}"
    from iap.models.base import weights_fingerprint
    return weights_fingerprint(source)
