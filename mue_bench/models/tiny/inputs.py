"""Turning `Sample`s into the built-in model's tensors: OFA-style prompts, word ids, normalised pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mue_bench.data.loaders import ImageSource, Sample, open_image
from mue_bench.models.tiny.tokenizer import WordTokenizer

CAPTION_PROMPT = "what does the image describe ?"


def prompt(sample: Sample) -> str:
    if sample.prompt:
        return sample.prompt
    if sample.task == "caption":
        return CAPTION_PROMPT
    return f'does the image describe " {sample.hypothesis} " ?'


def load_pixels(path: ImageSource, size: int) -> torch.Tensor:
    """[3, size, size] in [-1, 1]."""
    with open_image(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class TinyBatch:
    images: torch.Tensor  # [B, 3, S, S]
    ids: torch.Tensor  # [B, T] prompt ids, right-padded
    mask: torch.Tensor  # [B, T] True on real tokens

    def to(self, device: torch.device | str) -> TinyBatch:
        return TinyBatch(self.images.to(device), self.ids.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, rows: list[int]) -> TinyBatch:
        """A sub-batch, trimmed to its own longest prompt (as if it had been collated alone)."""
        idx = torch.tensor(rows)
        mask = self.mask[idx]
        width = int(mask.sum(1).max())
        return TinyBatch(self.images[idx], self.ids[idx, :width], mask[:, :width])


def pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids != pad_id


def collate(pixels: list[torch.Tensor], prompts: list[str], tok: WordTokenizer) -> TinyBatch:
    ids, mask = pad([tok.encode(p) for p in prompts], tok.pad_id)
    return TinyBatch(torch.stack(pixels), ids, mask)
