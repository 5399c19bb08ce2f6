"""Chinese -> English machine translation for manifests without English captions.

Any `transformers` seq2seq model works (MarianMT such as Helsinki-NLP/opus-mt-zh-en, NLLB with
src_lang zho_Hans): given as a hub id (pinned to the revision it resolves to) or a local folder.
`preset:tiny-mt` is a MarianMTModel with random weights and a SentencePiece vocabulary trained on
shapes-world captions: the real class and tokenizer, for tests and benchmarks (its English is noise).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from iap.errors import IapError
from iap.models.hub import is_local, revision
from iap.runtime import Runtime, place

TINY_MT = "preset:tiny-mt"


class Translator:
    """A seq2seq model and its tokenizer, placed on the runtime; `translate` is batched greedy decoding."""

    def __init__(self, source: str, runtime: Runtime, max_length: int = 128):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        self.source, self.runtime, self.max_length = source, runtime, max_length
        folder = write_tiny_translator(_preset_folder()) if source == TINY_MT else source
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


def _preset_folder() -> Path:
    from iap.storage import local_cache
    return local_cache("presets", "tiny-mt")


def fingerprint(source: str) -> str:
    """What identifies the translations a model gives: the preset name, hub id@commit, or the folder's content."""
    if source == TINY_MT:
        return TINY_MT
    if not is_local(source):
        return f"hub:{source}@{revision(source)}"
    from iap.models.base import weights_fingerprint
    return weights_fingerprint(source)


def write_tiny_translator(folder: Path, seed: int = 0, vocab_size: int = 200) -> Path:
    """A MarianMTModel (random weights, 1+1 layers, d_model 32) with MarianTokenizer files; written once."""
    if (folder / "config.json").exists():
        return folder
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    from iap import shapes
    folder.mkdir(parents=True, exist_ok=True)
    samples = shapes.samples(300, seed)
    with tempfile.TemporaryDirectory() as tmp:
        for side, lines in (("source", [s.caption_zh for s in samples]), ("target", [s.caption_en for s in samples])):
            (Path(tmp) / f"{side}.txt").write_text("\n".join(lines))
            spm.SentencePieceTrainer.train(input=str(Path(tmp) / f"{side}.txt"), model_prefix=str(folder / side),
                                           vocab_size=vocab_size // 2, hard_vocab_limit=False, character_coverage=1.0,
                                           model_type="unigram", bos_id=-1, eos_id=1, unk_id=2, pad_id=0, minloglevel=2)
            (folder / f"{side}.model").rename(folder / f"{side}.spm")
            (folder / f"{side}.vocab").unlink()
    pieces = ["<pad>", "</s>", "<unk>"]
    for side in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(folder / f"{side}.spm"))
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())) if p not in pieces]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False))
    tokenizer = MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                                vocab=str(folder / "vocab.json"), source_lang="zh", target_lang="en")
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=len(pieces), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                          forced_eos_token_id=1)
    model = MarianMTModel(config)
    target = spm.SentencePieceProcessor(model_file=str(folder / "target.spm"))
    english = {target.id_to_piece(i) for i in range(target.get_piece_size())} | {"</s>"}
    with torch.no_grad():  # random weights, but English pieces only: its noise passes the English filters
        model.final_logits_bias[0] = torch.tensor([0.0 if p in english else -1e4 for p in pieces])
    model.generation_config.max_length = 16
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
