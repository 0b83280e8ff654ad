"""Analytic FLOPs of each layer execution, so a skipped image layer (many tokens) weighs more than a
skipped text layer or a decoder step. Multiply-adds count as 2 FLOPs; norms and softmax are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerDims:
    d_model: int
    d_ff: int
    d_kv: int  # width of the K (and of the V) projection output; < d_model with grouped-query attention
    d_q: int | None = None  # width of the Q projection (heads x head_dim); d_model unless the model says otherwise
    ffn_mats: int = 2  # 3 for gated FFNs (gate, up, down)
    merged_cross: bool = False  # decoder attends to [self; encoder] in one attention (T5Gemma 2)
    # Per decoder layer, the sliding window of its self-attention cache (None: full attention).
    dec_windows: tuple[int | None, ...] = ()
    vocab: int = 0  # the LM head's outputs (for `head_every_layer`, whose extra head calls are counted)

    @property
    def q(self) -> int:
        return self.d_q or self.d_model

    def _ffn(self, n: int) -> float:
        return 2 * self.ffn_mats * n * self.d_model * self.d_ff

    def encoder_layer(self, n_query: int, n_key: int) -> float:
        """n_query tokens updated, attending over n_key tokens whose K/V are projected."""
        d, kv, q = self.d_model, self.d_kv, self.q
        proj = 2 * n_query * d * q * 2 + 2 * n_key * d * kv * 2  # q, o ; k, v
        attn = 2 * 2 * n_query * n_key * q  # scores and weighted sum, over every query head
        return float(proj + attn + self._ffn(n_query))

    def decoder_layer(self, self_len: int, cross_len: int) -> float:
        """One token through self-attention over self_len positions, cross-attention, FFN."""
        d, kv, q = self.d_model, self.d_kv, self.q
        self_attn = 2 * d * q * 2 + 2 * d * kv * 2
        if self.merged_cross:  # one attention over both; cross K/V are projected once per sample
            return float(self_attn + 2 * 2 * (self_len + cross_len) * q + self._ffn(1))
        cross_attn = 2 * d * q * 2 + 2 * 2 * cross_len * q
        return float(self_attn + 2 * 2 * self_len * q + cross_attn + self._ffn(1))

    def head(self) -> float:
        """One token through the LM head."""
        return float(2 * self.d_model * self.vocab)

    def kv_projection(self) -> float:
        return float(2 * self.d_model * self.d_kv * 2)

    def self_len(self, layer: int, step: int) -> int:
        """Positions a decoder layer's self-attention reads at 0-based `step`: a sliding-window cache keeps
        window - 1 past positions besides the current one."""
        window = self.dec_windows[layer] if layer < len(self.dec_windows) else None
        return step + 1 if window is None else min(step + 1, window)


def encoder_flops(dims: LayerDims, mode: str, n_img: int, n_txt: int, img_layers: int, txt_layers: int,
                  n_layers: int) -> float:
    if mode == "split":
        return img_layers * dims.encoder_layer(n_img, n_img) + txt_layers * dims.encoder_layer(n_txt, n_txt)
    # freeze: a saturated modality stops being updated but still supplies keys/values
    total = 0.0
    for layer in range(n_layers):
        n_q = n_img * (layer < img_layers) + n_txt * (layer < txt_layers)
        if n_q:
            total += dims.encoder_layer(n_q, n_img + n_txt)
    return total


def decoder_flops(dims: LayerDims, dec_layers: Sequence[int], cross_len: int, n_layers: int,
                  kv_fill: str, extra_heads: int = 0) -> float:
    """Every step's layers, the cross-attention K/V projections of each layer some step reached (once per
    sample), CALM's K/V projections for the layers `propagate` fills, and `extra_heads` LM-head calls."""
    total = dims.kv_projection() * cross_len * max(dec_layers, default=0) + extra_heads * dims.head()
    for step, used in enumerate(dec_layers):
        if dims.dec_windows:
            total += sum(dims.decoder_layer(dims.self_len(layer, step), cross_len) for layer in range(used))
        else:
            total += used * dims.decoder_layer(step + 1, cross_len)
        if kv_fill == "propagate":
            total += (n_layers - used) * dims.kv_projection()
    return total


def counted_flops(run: Callable[[], object]) -> float:
    """FLOPs of one call, counted by torch's FlopCounterMode: for the parts that run in full at every grid
    point (a vision tower, a patch embedding), which no analytic layer formula describes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run()
    return float(counter.get_total_flops())


def ranking_flops(dims: LayerDims, lengths: Sequence[int], used: int, cross_len: int, extra_heads: int = 0,
                  ) -> float:
    """One sample's share of a ranking pass (rank.py): each candidate's sequence (`lengths` positions) through
    `used` decoder layers, causal (position t attends over t + 1 positions, its own K/V projected once per
    layer), the cross-attention K/V of those layers once (the candidates share the sample's encoder output), and
    `extra_heads` LM-head calls of one position each. The same per-position terms as `decoder_flops` for a
    generated token at that position."""
    total = dims.kv_projection() * cross_len * used + extra_heads * dims.head()
    for n in lengths:
        for t in range(n):
            if dims.dec_windows:
                total += sum(dims.decoder_layer(dims.self_len(layer, t), cross_len) for layer in range(used))
            else:
                total += used * dims.decoder_layer(t + 1, cross_len)
    return total
