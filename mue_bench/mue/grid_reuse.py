"""Evaluating a threshold grid without recomputing what its points share.

Two facts make reuse exact (up to float noise at a threshold), both guaranteed by the engine's batch
invariance (a sample's result does not depend on its batch-mates):
- The encoder result depends on (encoder mode, tau_img, tau_txt) only: points that differ in tau_dec,
  kv_fill or schedule share it. Points are evaluated grouped by encoder setting, and only the current
  setting's encoder outputs are kept, so memory does not grow with the grid.
- A sample's generation depends on its encoder output, which the exit layers (e_img, e_txt) determine, and
  on the decoder setting. Different encoder thresholds often give a sample the same exits, so generations
  are remembered per (sample, mode, e_img, e_txt, decoder setting) and only the new ones are decoded,
  as one sub-batch of the rows that need it.
With `exit_scope = "batch"` a sample's exits depend on its batch-mates, so generations are remembered per batch
(keyed by every row's encoder exits) and a batch is decoded whole, never as a sub-batch.
Wall-clock timing cannot be shared: the runner times the first `timing.batches` batches of every point by
running them in full and uses this module for the rest.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.encoder import EncoderResult
from mue_bench.mue.engine import BatchResult, Decoded, decode, decoded_rows, encode, sample_exits
from mue_bench.mue.search import DecodingConfig


def encoder_setting(cfg: ExitConfig) -> Hashable:
    fixed = cfg.fixed_exit[:2] if cfg.fixed_exit else None
    return cfg.encoder_mode, cfg.tau_img, cfg.tau_txt, fixed, cfg.exit_scope


def decoder_setting(cfg: ExitConfig) -> Hashable:
    fixed = cfg.fixed_exit[2] if cfg.fixed_exit else None
    return cfg.tau_dec, cfg.kv_fill, cfg.dec_schedule, fixed, cfg.exit_scope, cfg.head_every_layer


class GridReuse:
    def __init__(self, adapter: ExitAdapter, decoding: DecodingConfig):
        self.adapter, self.decoding = adapter, decoding
        self._setting: Hashable = None
        self._encoded: dict[int, tuple[Streams, EncoderResult]] = {}  # batch index -> current setting's
        self._decoded: dict[tuple, Decoded] = {}
        self._executions = 0  # encoder stream layers + decoder layers per token, summed over samples

    def take_executions(self) -> int:
        """Layer executions since the last call (each point's share, for the sweep's cost accounting)."""
        n, self._executions = self._executions, 0
        return n

    def evaluate(self, batch_index: int, first_sample: int, batch: Any, cfg: ExitConfig) -> BatchResult:
        """The batch's per-sample records under `cfg`; `first_sample` is its first sample's index in the
        dataset (the key under which generations are remembered)."""
        if encoder_setting(cfg) != self._setting:
            self._setting, self._encoded = encoder_setting(cfg), {}
        if batch_index not in self._encoded:
            self._encoded[batch_index] = encode(self.adapter, batch, cfg)
            enc = self._encoded[batch_index][1]
            self._executions += int((enc.img_layers + enc.txt_layers).sum())
        streams, enc = self._encoded[batch_index]
        img, txt = enc.img_layers.tolist(), enc.txt_layers.tolist()
        if cfg.exit_scope == "batch":
            whole = (first_sample, cfg.encoder_mode, tuple(img), tuple(txt), decoder_setting(cfg))
            keys: list[tuple] = [(whole, b) for b in range(len(img))]
        else:
            keys = [(first_sample + b, cfg.encoder_mode, img[b], txt[b], decoder_setting(cfg)) for b in range(len(img))]
        missing = [b for b, k in enumerate(keys) if k not in self._decoded]
        if missing and cfg.exit_scope == "batch":
            missing = list(range(len(img)))
        if missing:
            rows = torch.tensor(missing, device=enc.out.device)
            stepper, tokens = decode(self.adapter, enc.out[rows], enc.mask[rows], cfg, self.decoding)
            for b, dec in zip(missing, decoded_rows(stepper, tokens)):
                self._decoded[keys[b]] = dec
                self._executions += sum(dec.layers)
        n_img, n_txt = streams.image.shape[1], streams.text_mask.sum(1).tolist()
        fixed = self.adapter.input_flops(batch)
        return BatchResult([sample_exits(self.adapter, cfg, enc, b, n_img, int(n_txt[b]), self._decoded[k], fixed)
                            for b, k in enumerate(keys)])
