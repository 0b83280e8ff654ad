"""What the exit engine needs from a model family: its layers, one call at a time.

An adapter exposes embeddings, single encoder/decoder layer calls, the final norms and head, and a KV
cache (cache.py). The engine owns every exit decision and cache fill, so the semantics of DESIGN.md §1
are written once; adapters only translate to their model's modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mue_bench.mue.cache import KV, KVCache
from mue_bench.mue.cost import LayerDims


@dataclass
class Streams:
    """Embedding outputs (h_0) of the two encoder streams."""

    image: torch.Tensor  # [B, Ni, D]
    text: torch.Tensor  # [B, Nt, D]
    text_mask: torch.Tensor  # [B, Nt], True on real tokens

    @property
    def image_mask(self) -> torch.Tensor:
        return torch.ones(self.image.shape[:2], dtype=torch.bool, device=self.image.device)


class ExitAdapter(Protocol):
    n_enc_layers: int
    n_dec_layers: int
    bos_id: int
    eos_id: int
    pad_id: int
    dims: LayerDims

    def embed_streams(self, batch: Any) -> Streams: ...

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        """Encoder layer `layer` on [B, N, D]. With `queries`, only those positions are computed and returned
        ([B, len, D]); all N positions still serve as keys/values (`freeze` mode skips a saturated modality).
        `stream` says what h holds: "joint" ([image; text]), "image" or "text" (`split` mode), for models
        whose positions are relative to the joint prompt (T5Gemma 2's RoPE)."""

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor: ...

    def decoder_cache(self, enc_out: torch.Tensor) -> KVCache: ...

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """[R] token ids at generation step `step` -> [R, D]."""

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: KVCache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        """Run decoder layer `layer` on [R, D] states; appends this step's K/V to the cache."""

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        """Layer `layer`'s own self-attention K/V for states [R, D] (CALM's state propagation)."""

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head + log-softmax on [R, D] -> [R, V]."""


def compacts(adapter: ExitAdapter) -> bool:
    """Whether the engine may run a layer on a subset of a batch's rows (batch compaction: rows that exited
    cost nothing). An adapter opts in with `row_subsets = True`, promising that `encoder_layer` works on any
    subset of rows given with their masks and providing `decoder_layer_rows`:

        decoder_layer_rows(layer, h, rows, cache, enc_mask) -> [len(rows), D]
            Decoder layer `layer` on the states `h` of batch rows `rows` only; appends a slot for every row of
            the cache, with this step's K/V for `rows` (the engine fills the others' slots).

    An adapter that holds per-batch state for the encoder (T5Gemma 2's positions) also provides
    `encoder_layer_rows(layer, h, key_mask, rows, queries, stream)`, told which batch rows h holds;
    otherwise `encoder_layer` is called on the subset as it is.
    """
    return bool(getattr(adapter, "row_subsets", False))

