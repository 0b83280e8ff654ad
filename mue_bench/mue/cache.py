"""The decoder KV cache as the exit engine sees it, and a plain-tensor implementation.

The engine needs five operations to fill skipped layers (DESIGN.md §1, kv_fill): read this step's slot
of a layer, append a slot, overwrite the slot for some rows, replace whole buffers for some rows
(`official`), and reorder rows for beam search. A sixth pair undoes a layer run the engine drops (the lagged
exit check, sync.py): `layer_state` before the run, `restore_layer` after it. Appending builds new tensors and
nothing writes into a buffer while a step's layers run (the fills come after them), so a layer's state is
references to its buffers, free to take at every layer. Cross-attention K/V a dropped run projected are kept:
they are a function of the encoder output alone, the same whenever a layer first needs them. Adapters for
transformers models wrap their own cache classes behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

KV = tuple[torch.Tensor, torch.Tensor]


def slot_for_all_rows(slot: KV, index: torch.Tensor, n_rows: int) -> KV:
    """A step's K/V slot for all `n_rows` rows from one computed for rows `index` only: zeros elsewhere, for
    the engine to fill (batch compaction)."""
    k, v = (t.new_zeros((n_rows, *t.shape[1:])) for t in slot)
    k[index], v[index] = slot
    return k, v


class KVCache(Protocol):
    def past(self, layer: int) -> KV | None: ...
    def slot(self, layer: int) -> KV: ...
    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...
    def write_slot(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...
    def copy_layer(self, src: int, dst: int, rows: torch.Tensor) -> None: ...
    def reorder(self, index: torch.Tensor) -> None: ...
    def length(self, layer: int) -> int: ...
    def layer_state(self, layer: int) -> object: ...
    def restore_layer(self, layer: int, state: object) -> None: ...


CrossProjector = Callable[[int], KV]  # layer -> that layer's cross-attention K/V of the encoder output


class TensorKVCache:
    """Self-attention K/V [R, H, T, Dh] per layer, grown by one slot per step. Cross-attention K/V are
    projected the first time a layer is reached, as transformers does, so layers no token reaches cost
    nothing (the cost model charges only those some step reached); `official`'s whole-buffer copies
    project the layers they write."""

    def __init__(self, n_layers: int, cross_kv: CrossProjector):
        self._cross_kv = cross_kv
        self._cross: list[KV | None] = [None] * n_layers
        self._order: torch.Tensor | None = None  # beam reorders so far, applied to layers projected later
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def cross(self, layer: int) -> KV:
        kv = self._cross[layer]
        if kv is None:
            kv = self._cross_kv(layer)
            if self._order is not None:
                kv = (kv[0][self._order], kv[1][self._order])
            self._cross[layer] = kv
        return kv

    def past(self, layer: int) -> KV | None:
        k, v = self.keys[layer], self.values[layer]
        return None if k is None or v is None else (k, v)

    def slot(self, layer: int) -> KV:
        k, v = self.keys[layer], self.values[layer]
        assert k is not None and v is not None, f"layer {layer} has no cache yet"
        return k[:, :, -1:], v[:, :, -1:]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        pk, pv = self.keys[layer], self.values[layer]
        self.keys[layer] = k if pk is None else torch.cat([pk, k], 2)
        self.values[layer] = v if pv is None else torch.cat([pv, v], 2)

    def write_slot(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        pk, pv = self.keys[layer], self.values[layer]
        assert pk is not None and pv is not None
        sel = rows[:, None, None, None]
        pk[:, :, -1:] = torch.where(sel, k, pk[:, :, -1:])
        pv[:, :, -1:] = torch.where(sel, v, pv[:, :, -1:])

    def copy_layer(self, src: int, dst: int, rows: torch.Tensor) -> None:
        sel = rows[:, None, None, None]
        for buf in (self.keys, self.values):
            s, d = buf[src], buf[dst]
            assert s is not None and d is not None
            buf[dst] = torch.where(sel, s, d)
        (ck, cv), (dk, dv) = self.cross(src), self.cross(dst)
        self._cross[dst] = (torch.where(sel, ck, dk), torch.where(sel, cv, dv))

    def reorder(self, index: torch.Tensor) -> None:
        self.keys = [None if k is None else k[index] for k in self.keys]
        self.values = [None if v is None else v[index] for v in self.values]
        self._cross = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self._cross]
        self._order = index if self._order is None else self._order[index]

    def length(self, layer: int) -> int:
        k = self.keys[layer]
        return 0 if k is None else k.shape[2]

    def layer_state(self, layer: int) -> KV | None:
        return self.past(layer)

    def restore_layer(self, layer: int, state: KV | None) -> None:
        self.keys[layer], self.values[layer] = (None, None) if state is None else state

    def rows(self, layer: int, index: torch.Tensor) -> TensorKVCache:
        """A cache holding only layer `layer` of rows `index` (to run that layer on those rows)."""
        k, v = self.cross(layer)
        sub = TensorKVCache(len(self.keys), self._no_other_layer)
        sub._cross[layer] = (k[index], v[index])
        past = self.past(layer)
        if past is not None:
            sub.keys[layer], sub.values[layer] = past[0][index], past[1][index]
        return sub

    def append_rows(self, layer: int, index: torch.Tensor, sub: TensorKVCache) -> None:
        """Append this step's slot of layer `layer`: `sub`'s new slot for rows `index`, zeros elsewhere."""
        self.append(layer, *slot_for_all_rows(sub.slot(layer), index, self.cross(layer)[0].shape[0]))

    @staticmethod
    def _no_other_layer(layer: int) -> KV:
        raise AssertionError(f"a row subset of one layer's cache was asked for layer {layer}")
