"""Analytic FLOPs of each layer execution, so a skipped image layer (many tokens) weighs more than a
skipped text layer or a decoder step. Multiply-adds count as 2 FLOPs; norms and softmax are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerDims:
    d_model: int
    d_ff: int
    d_kv: int  # width of the K (and of the V) projection output; < d_model with grouped-query attention

    def encoder_layer(self, n_query: int, n_key: int) -> float:
        """n_query tokens updated, attending over n_key tokens whose K/V are projected."""
        d, kv = self.d_model, self.d_kv
        proj = 2 * n_query * d * d * 2 + 2 * n_key * d * kv * 2  # q, o ; k, v
        attn = 2 * 2 * n_query * n_key * kv
        return float(proj + attn + 2 * 2 * n_query * d * self.d_ff)

    def decoder_layer(self, self_len: int, cross_len: int) -> float:
        """One token through self-attention over self_len positions, cross-attention, FFN."""
        d, kv = self.d_model, self.d_kv
        self_attn = 2 * d * d * 2 + 2 * d * kv * 2 + 2 * 2 * self_len * kv
        cross_attn = 2 * d * d * 2 + 2 * 2 * cross_len * kv  # cross K/V are projected once per sample
        return float(self_attn + cross_attn + 2 * 2 * d * self.d_ff)

    def kv_projection(self) -> float:
        return float(2 * self.d_model * self.d_kv * 2)


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
                  kv_fill: str) -> float:
    total = 0.0
    for step, used in enumerate(dec_layers):
        total += used * dims.decoder_layer(step + 1, cross_len)
        if kv_fill == "propagate":
            total += (n_layers - used) * dims.kv_projection()
    return total
