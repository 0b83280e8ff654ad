"""A word-level tokenizer for the built-in model, saved next to its checkpoint as plain JSON.

The synthetic benchmark has a closed vocabulary of a few dozen words, so words are the natural unit:
the tokenizer stays human-readable and the model small.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    def __init__(self, vocab: list[str]):
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @classmethod
    def build(cls, texts: Iterable[str]) -> WordTokenizer:
        words = sorted({w for t in texts for w in split_words(t)})
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, eos: bool = True) -> list[int]:
        ids = [self.index.get(w, self.unk_id) for w in split_words(text)]
        return ids + [self.eos_id] if eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.vocab[i])
        return " ".join(words)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"vocab": self.vocab}, indent=0))

    @classmethod
    def load(cls, path: Path) -> WordTokenizer:
        return cls(json.loads(path.read_text())["vocab"])
