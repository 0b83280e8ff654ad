"""One batch through MuE: encoder exit, then decoding with per-token decoder exit.

Returns everything the measurements of DESIGN.md §2 are computed from, per sample: generated ids,
layers used per encoder stream, layers used per generated token, similarity traces and analytic FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.cost import decoder_flops, encoder_flops
from mue_bench.mue.decoder import MuEStepper
from mue_bench.mue.encoder import EncoderResult, run_encoder
from mue_bench.mue.search import DecodingConfig, generate
from mue_bench.mue.sync import ExitSync


@dataclass
class SampleExits:
    tokens: list[int]
    enc_img_layers: int
    enc_txt_layers: int
    dec_layers: list[int]  # layers used at each decoding step the sample took part in
    enc_img_sims: list[float]
    enc_txt_sims: list[float]
    dec_sims: list[list[float]]  # per step, s_l for l = 1..L-1 (NaN where not computed)
    flops: float

    @property
    def layers_used(self) -> int:
        return self.enc_img_layers + self.enc_txt_layers + sum(self.dec_layers)


@dataclass
class BatchResult:
    samples: list[SampleExits]


@dataclass
class RawBatch:
    """What the model work produced, before any host-side bookkeeping."""

    batch: Any
    streams: Streams
    encoder: EncoderResult
    stepper: MuEStepper
    tokens: list[list[int]]


@torch.no_grad()
def encode(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, sync: ExitSync = "eager",
           ) -> tuple[Streams, EncoderResult]:
    streams = adapter.embed_streams(batch)
    return streams, run_encoder(adapter, streams, cfg, sync)


@torch.no_grad()
def decode(adapter: ExitAdapter, enc_out: torch.Tensor, enc_mask: torch.Tensor, cfg: ExitConfig,
           decoding: DecodingConfig, sync: ExitSync = "eager") -> tuple[MuEStepper, list[list[int]]]:
    stepper = MuEStepper(adapter, enc_out, enc_mask, cfg, decoding.num_beams, decoding.max_len, sync)
    return stepper, generate(stepper, enc_out.shape[0], decoding, enc_out.device)


def run_model(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, decoding: DecodingConfig,
              sync: ExitSync = "eager") -> RawBatch:
    """The timed part: encoder with exits, then generation with per-token exits. `sync` is how the layer loops
    read their exit flags (sync.py); it changes when the host waits, never a result."""
    streams, enc = encode(adapter, batch, cfg, sync)
    stepper, tokens = decode(adapter, enc.out, enc.mask, cfg, decoding, sync)
    return RawBatch(batch, streams, enc, stepper, tokens)


@dataclass
class Decoded:
    """One sample's generation: ids, layers used per step (0 once finished), similarities per step."""

    tokens: list[int]
    layers: list[int]
    sims: list[list[float]]
    heads: int = 0  # LM-head calls beyond each step's own (head_every_layer)
    final_sims: list[float] = field(default_factory=list)  # per step, after the last layer (head_every_layer)


def decoded_rows(stepper: MuEStepper, tokens: list[list[int]]) -> list[Decoded]:
    layers = torch.stack(stepper.layers, 1).tolist()  # [B, steps]
    sims = torch.stack(stepper.sims, 1).tolist()  # [B, steps, L-1]
    heads = torch.stack(stepper.heads, 1).sum(1).tolist()  # [B]
    final = torch.stack(stepper.final_sims, 1).tolist()  # [B, steps]
    return [Decoded(t, u, s, h, f) for t, u, s, h, f in zip(tokens, layers, sims, heads, final)]


def sample_exits(adapter: ExitAdapter, cfg: ExitConfig, enc: EncoderResult, b: int, n_img: int, n_txt: int,
                 dec: Decoded, fixed_flops: float) -> SampleExits:
    """Sample b's record: its encoder exits from `enc`, its generation, and analytic FLOPs."""
    img_layers, txt_layers = int(enc.img_layers[b]), int(enc.txt_layers[b])
    steps = [u for u in dec.layers if u > 0]
    flops = fixed_flops + encoder_flops(adapter.dims, cfg.encoder_mode, n_img, n_txt, img_layers, txt_layers,
                                        adapter.n_enc_layers)
    flops += decoder_flops(adapter.dims, steps, n_img + n_txt, adapter.n_dec_layers, cfg.kv_fill, dec.heads)
    return SampleExits(
        tokens=dec.tokens, enc_img_layers=img_layers, enc_txt_layers=txt_layers, dec_layers=steps,
        enc_img_sims=enc.img_sims[b].tolist(), enc_txt_sims=enc.txt_sims[b].tolist(),
        dec_sims=[s for s, u in zip(dec.sims, dec.layers) if u > 0], flops=flops,
    )


def collect(adapter: ExitAdapter, raw: RawBatch, cfg: ExitConfig) -> BatchResult:
    """Per-sample exits, traces and analytic FLOPs from a finished batch."""
    n_img = raw.streams.image.shape[1]
    n_txt = raw.streams.text_mask.sum(1).tolist()
    fixed = adapter.input_flops(raw.batch)
    decoded = decoded_rows(raw.stepper, raw.tokens)
    return BatchResult([sample_exits(adapter, cfg, raw.encoder, b, n_img, int(n_txt[b]), dec, fixed)
                        for b, dec in enumerate(decoded)])


def run_batch(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, decoding: DecodingConfig,
              sync: ExitSync = "eager") -> BatchResult:
    return collect(adapter, run_model(adapter, batch, cfg, decoding, sync), cfg)


class Engine:
    """A model family's adapter with fixed decoding settings: what a sweep runs, one batch and one exit setting
    at a time. `run` is the model work (what timing measures); `collect` the host-side bookkeeping after it.
    The runner depends on this interface only, so tests can hand it a fake that exits where it is told.
    `exit_sync` is how the timed runs read exit flags (sync.py: the same results, a different wait); grid reuse's
    untimed evaluations read them eagerly."""

    def __init__(self, adapter: ExitAdapter, decoding: DecodingConfig, exit_sync: ExitSync = "eager"):
        self.adapter, self.decoding, self.exit_sync = adapter, decoding, exit_sync

    @property
    def native_encoder_mode(self) -> str | None:
        """The encoder mode the model was trained for, where the family has one."""
        return self.adapter.native_encoder_mode

    @property
    def depth(self) -> tuple[int, int]:
        """(encoder layers, decoder layers)."""
        return self.adapter.n_enc_layers, self.adapter.n_dec_layers

    def prepare(self, samples: list) -> Any:
        return self.adapter.prepare(samples)

    def text(self, tokens: list[int]) -> str:
        return self.adapter.text(tokens)

    def run(self, batch: Any, cfg: ExitConfig) -> RawBatch:
        return run_model(self.adapter, batch, cfg, self.decoding, self.exit_sync)

    def collect(self, raw: RawBatch, cfg: ExitConfig) -> BatchResult:
        return collect(self.adapter, raw, cfg)

    def run_batch(self, batch: Any, cfg: ExitConfig) -> BatchResult:
        return self.collect(self.run(batch, cfg), cfg)

    # Whether grid reuse may take a point's result from a stored run whose exit decisions it would make the same
    # way (grid_reuse.py's certificates); off, it shares by encoder exits alone (benchmarks/grid_cost.py compares).
    certificates = True

    def grid_reuse(self):
        """Shared evaluation of the untimed batches of a grid (grid_reuse.py)."""
        from mue_bench.mue.grid_reuse import GridReuse  # grid_reuse builds on this module

        return GridReuse(self.adapter, self.decoding, certificates=self.certificates)
