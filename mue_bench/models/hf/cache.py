"""transformers' `EncoderDecoderCache` behind the engine's KVCache protocol (mue/cache.py).

The model's own attention modules append to this cache when a layer runs, exactly as under `generate()`;
the engine only touches it to fill the slots of layers a row skipped. Cross-attention K/V stay lazy, as in
transformers: a layer's are projected the first time any token reaches it, so skipped layers cost nothing,
except under `official`, whose whole-buffer copies need both buffers to exist.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from mue_bench.mue.cache import KV, CrossProjector, slot_for_all_rows


class HFKVCache:
    def __init__(self, config, cross_kv: CrossProjector):
        """`config` shapes the self-attention cache (sliding-window layers included); cross-attention layers
        are plain, full and created as they are first reached."""
        self.hf = EncoderDecoderCache(DynamicCache(config=config), DynamicCache())
        self._cross_kv = cross_kv

    @property
    def _self(self):
        return self.hf.self_attention_cache.layers

    def past(self, layer: int) -> KV | None:
        n = self.length(layer)
        return None if n == 0 else (self._self[layer].keys, self._self[layer].values)

    def slot(self, layer: int) -> KV:
        entry = self._self[layer]
        return entry.keys[:, :, -1:], entry.values[:, :, -1:]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.hf.self_attention_cache.update(k, v, layer)

    def write_slot(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        entry, sel = self._self[layer], rows[:, None, None, None]
        entry.keys[:, :, -1:] = torch.where(sel, k, entry.keys[:, :, -1:])
        entry.values[:, :, -1:] = torch.where(sel, v, entry.values[:, :, -1:])

    def _cross(self, layer: int):
        if not self.hf.is_updated.get(layer):
            self.hf.cross_attention_cache.update(*self._cross_kv(layer), layer)
            self.hf.is_updated[layer] = True
        return self.hf.cross_attention_cache.layers[layer]

    def copy_layer(self, src: int, dst: int, rows: torch.Tensor) -> None:
        """Whole-buffer copy (the authors' fill). A sliding-window layer keeps only its last positions, so
        between layers of different types the most recent min(len) positions are copied."""
        sel = rows[:, None, None, None]
        for s, d in ((self._self[src], self._self[dst]), (self._cross(src), self._cross(dst))):
            n = min(s.keys.shape[2], d.keys.shape[2])
            d.keys[:, :, -n:] = torch.where(sel, s.keys[:, :, -n:], d.keys[:, :, -n:])
            d.values[:, :, -n:] = torch.where(sel, s.values[:, :, -n:], d.values[:, :, -n:])

    def reorder(self, index: torch.Tensor) -> None:
        self.hf.reorder_cache(index)

    def length(self, layer: int) -> int:
        return self.hf.self_attention_cache.get_seq_length(layer)

    def layer_state(self, layer: int) -> dict:
        """The self-attention layer's attributes (buffers, a sliding window's count and its lazy initialisation):
        `update` rebinds them and writes into none, so a shallow copy restores the layer exactly."""
        return dict(vars(self._self[layer]))

    def restore_layer(self, layer: int, state: dict) -> None:
        entry = vars(self._self[layer])
        entry.clear()
        entry.update(state)

    def rows(self, layer: int, index: torch.Tensor) -> HFKVCache:
        """A cache whose layer `layer` holds rows `index` only (self- and cross-attention), to run that layer on
        those rows; the model's attention appends to it as usual. Other layers are this cache's, untouched."""
        sub = copy.copy(self)
        caches = []
        for cache, entry in ((self.hf.self_attention_cache, self._self[layer]),
                             (self.hf.cross_attention_cache, self._cross(layer))):
            view = copy.copy(cache)
            view.layers = list(cache.layers)
            view.layers[layer] = part = copy.copy(entry)
            if getattr(entry, "keys", None) is not None and entry.keys.numel():
                part.keys, part.values = entry.keys[index], entry.values[index]
            caches.append(view)
        sub.hf = EncoderDecoderCache(*caches)
        sub.hf.is_updated[layer] = True
        return sub

    def append_rows(self, layer: int, index: torch.Tensor, sub: HFKVCache) -> None:
        """Append this step's slot of layer `layer`: `sub`'s new slot for rows `index`, zeros elsewhere."""
        self.append(layer, *slot_for_all_rows(sub.slot(layer), index, self._cross(layer).keys.shape[0]))
