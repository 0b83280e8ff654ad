"""How the layer loops learn on the host which rows are still active (the run's `exit_sync`).

To go on, and to run a layer on the active rows only (batch compaction), the host must know the exit flags
the device computed. Reading a device value waits for everything queued before it, so reading a layer's flags
before launching the next layer (`eager`) drains the launch queue once per layer, and the device idles while
the host launches the next one. `lagged` launches layer l+1 first, on the rows the host last knew to be active
(those before layer l, a superset), masked on the device with `torch.where` so rows that exited keep their
state, and only then reads layer l's flags. The flags' counts were copied to pinned host memory behind an event
before layer l+1 was queued, so the read waits for layer l only, while layer l+1 keeps the device busy. When the
read says nobody was active after layer l, layer l+1 ran for nobody: the loop drops its output and (decoder)
what it added to the KV cache. Every decision (exits, tokens, FLOPs, heads, cache lengths) is eager's. The floats
are too, bit for bit, wherever each layer runs on the rows and positions eager runs it on: always without batch
compaction, with exits shared by the batch (batch scope, one sample, fixed exits), and on mue-tiny's joint layer.
Where a compacting batch's rows exit apart, the layer after an exit runs on a superset of eager's rows, and in
`freeze` mode a saturated modality's queries are dropped a layer later; a kernel of another shape may round the
last bit differently (a few float32 ulps in the tests), as a compacted batch already differs from a masked one.
Lagged pays one speculative layer per exit, which pays off only where launches, not compute, bound the loop (a
GPU at small batch): eager stays the default until benchmarks/gpu_suite.sh has measured both.
"""

from __future__ import annotations

from typing import Literal

import torch

ExitSync = Literal["eager", "lagged"]


class Flags:
    """Boolean row masks [B] on the device and how many rows each holds, on their way to the host.

    Built, it queues the counts' copy to the host; `counts` waits for that copy only, not for what was queued
    after it. The loops never update a mask in place, so the masks stay those the counts are of."""

    def __init__(self, *masks: torch.Tensor):
        self.masks = masks
        counts = torch.stack([m.sum() for m in self.masks])
        self._event: torch.cuda.Event | None = None
        if counts.is_cuda:
            self._host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            self._host.copy_(counts, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = counts
        self._counts: list[int] | None = None
        self._rows: dict[int, torch.Tensor] = {}

    @property
    def counts(self) -> list[int]:
        if self._counts is None:
            if self._event is not None:
                self._event.synchronize()
            self._counts = self._host.tolist()
        return self._counts

    def rows(self, i: int = 0) -> torch.Tensor:
        """The indices of mask i's rows; their number is known on the host, so finding them needs no sync."""
        if i not in self._rows:
            self._rows[i] = self.masks[i].nonzero_static(size=self.counts[i]).squeeze(1)
        return self._rows[i]
