"""Tokenizer files generated from a word list, so the tiny preset needs no hub download."""

from __future__ import annotations

import json
from pathlib import Path

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_clip_bpe(folder: Path, words: list[str]) -> None:
    """Write vocab.json + merges.txt for a CLIP BPE that spells each word as one token.

    Every single character (with and without the end-of-word marker) is in the vocabulary,
    and each word gets left-to-right merges, so any lowercase text still tokenizes.
    """
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge, token = f"{left} {right}", left + right
            if merge not in merges:
                merges.append(merge)
            if token not in vocab:
                vocab.append(token)
            left = token
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def write_bert_vocab(folder: Path, characters: list[str]) -> None:
    """Write a character-level BERT vocab.txt (BertTokenizer splits CJK text into characters)."""
    extra = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list("，。、")
    tokens = BERT_SPECIALS + sorted(set(characters) | set(extra))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
