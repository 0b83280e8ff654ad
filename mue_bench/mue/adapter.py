"""What the exit engine needs from a model family: its layers, one call at a time.

An adapter exposes embeddings, single encoder/decoder layer calls, the final norms and head, and a KV
cache (cache.py). The engine owns every exit decision and cache fill, so the semantics of DESIGN.md §1
are written once; adapters only translate to their model's modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mue_bench.errors import SpecError
from mue_bench.mue.cache import KV, KVCache
from mue_bench.mue.cost import LayerDims
from mue_bench.mue.search import DecodingConfig


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
    """The whole contract. Adapters subclass it, so the optional members below have their defaults; the engine
    reaches every member directly, never by probing for it."""

    n_enc_layers: int
    n_dec_layers: int
    bos_id: int
    eos_id: int
    pad_id: int
    dims: LayerDims
    # The encoder mode the model was trained for ("freeze" for a joint encoder, "split" for separate streams);
    # None where the family has no such notion. Sweeps warn when a grid uses the other one.
    native_encoder_mode: str | None = None
    # Batch compaction (a layer runs only on the rows still active, so exited rows cost nothing). True promises
    # that `encoder_layer` works on any subset of rows given with their masks, and that `decoder_layer_rows`
    # is implemented.
    row_subsets: bool = False
    # A ranking pass (decoding.mode = "rank", rank.py): one teacher-forced, causal, non-incremental decoder pass
    # over [decoder prompt; answer] for every candidate answer. True promises `decoder_prompts`,
    # `sequence_context`, `decoder_sequence_embed` and `decoder_sequence_layer`; the spec refuses "rank" for
    # families that do not set it (spec.RANK_FAMILIES).
    full_sequence: bool = False
    # Decoder positions the model's position tables hold (a ranking pass's [prompt; answer] must fit); None where
    # the family has no fixed table the engine needs to check against.
    decoder_positions: int | None = None

    # --- inputs and outputs (the runner's side) ------------------------------------------------------
    def prepare(self, samples: list) -> Any:
        """Pre-processed model inputs of these samples, as one padded batch with a `.to(device)`."""
        ...

    def text(self, ids: list[int]) -> str:
        """Generated ids as text (special tokens dropped)."""
        ...

    def decoding(self, num_beams: int = 1, max_len: int = 16, no_repeat_ngram: int = 0, ignore_eos: bool = False,
                 ) -> DecodingConfig:
        """The search settings with this model's special tokens. Where the runner leaves an argument out (the
        spec did not set it), the model's own default applies: a transformers checkpoint's generation config."""
        ...

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        """An answer's token ids as the decoder emits it, ending with EOS (for `DecodingConfig.answers`)."""
        raise SpecError(f"decoding.answers: the {type(self).__name__} family cannot restrict its answers; "
                        "remove decoding.answers")

    def input_flops(self, batch: Any) -> float:
        """FLOPs per sample of work no exit can skip (e.g. a vision tower), counted in every point's FLOPs so
        that flop_savings promises only what skipping layers can deliver."""
        return 0.0

    # --- layers (the engine's side) ------------------------------------------------------------------
    def embed_streams(self, batch: Any) -> Streams: ...

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        """Encoder layer `layer` on [B, N, D]. With `queries`, only those positions are computed and returned
        ([B, len, D]); all N positions still serve as keys/values (`freeze` mode skips a saturated modality).
        `stream` says what h holds: "joint" ([image; text]), "image" or "text" (`split` mode), for models
        whose positions are relative to the joint prompt (T5Gemma 2's RoPE)."""
        ...

    def encoder_layer_rows(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, rows: torch.Tensor,
                           queries: slice | None = None, stream: str = "joint") -> torch.Tensor:
        """`encoder_layer` on the batch rows `rows` only (h holds just those rows). The default suits models
        with no per-batch encoder state; T5Gemma 2 overrides it to pick its rows' positions."""
        return self.encoder_layer(layer, h, key_mask, queries, stream=stream)

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor: ...

    def decoder_cache(self, enc_out: torch.Tensor) -> KVCache: ...

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """[R] token ids at generation step `step` -> [R, D]."""
        ...

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: KVCache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        """Run decoder layer `layer` on [R, D] states; appends this step's K/V to the cache."""
        ...

    def decoder_layer_rows(self, layer: int, h: torch.Tensor, rows: torch.Tensor, cache: KVCache,
                           enc_mask: torch.Tensor) -> torch.Tensor:
        """Decoder layer `layer` on the states `h` of batch rows `rows` only -> [len(rows), D]; appends a slot
        for every row of the cache, with this step's K/V for `rows` (the engine fills the others' slots).
        Required with `row_subsets`."""
        raise NotImplementedError(f"{type(self).__name__} sets row_subsets but has no decoder_layer_rows")

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        """Layer `layer`'s own self-attention K/V for states [R, D] (CALM's state propagation)."""
        ...

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head + log-softmax on [..., D] -> [..., V]."""
        ...

    # --- full-sequence decoder (a ranking pass; required with `full_sequence`) -------------------------------
    def decoder_prompts(self, batch: Any) -> list[list[int]]:
        """Each sample's decoder prompt: the tokens the decoder reads before an answer, BOS first."""
        return [[self.bos_id] for _ in range(len(batch.ids))]

    def sequence_context(self, enc_out: torch.Tensor, enc_mask: torch.Tensor, n_positions: int) -> Any:
        """What every layer call of one pass over `n_positions` decoder positions shares (position biases, the
        encoder output [B, N, D] with its mask [B, N]): built once per pass, after the encoder ran on the batch."""
        raise NotImplementedError(f"{type(self).__name__} has no full-sequence decoder (full_sequence is False)")

    def decoder_sequence_embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[R, T] token ids at positions 0..T-1 -> [R, T, D]."""
        raise NotImplementedError(f"{type(self).__name__} has no full-sequence decoder (full_sequence is False)")

    def decoder_sequence_layer(self, layer: int, h: torch.Tensor, context: Any, samples: torch.Tensor,
                               key_mask: torch.Tensor) -> torch.Tensor:
        """Decoder layer `layer` over whole sequences h [R, T, D], causal (position t attends to 0..t), not
        incremental: no cache is read or written. Row r belongs to batch sample `samples[r]` (its encoder output
        in `context`); `key_mask` [R, T] is True on real tokens (padding is masked as keys). Rows are
        independent: any subset of a pass's rows may be given."""
        raise NotImplementedError(f"{type(self).__name__} has no full-sequence decoder (full_sequence is False)")


def compacts(adapter: ExitAdapter) -> bool:
    """Whether the engine may run a layer on a subset of a batch's rows (see `ExitAdapter.row_subsets`)."""
    return adapter.row_subsets
