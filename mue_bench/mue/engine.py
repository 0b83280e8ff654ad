"""One batch through MuE: encoder exit, then decoding with per-token decoder exit.

Returns everything the measurements of DESIGN.md §2 are computed from, per sample: generated ids,
layers used per encoder stream, layers used per generated token, similarity traces and analytic FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mue_bench.decoding import DecodingConfig, generate
from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.cost import decoder_flops, encoder_flops
from mue_bench.mue.decoder import MuEStepper
from mue_bench.mue.encoder import EncoderResult, run_encoder


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
def run_model(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, decoding: DecodingConfig) -> RawBatch:
    """The timed part: encoder with exits, then generation with per-token exits."""
    streams = adapter.embed_streams(batch)
    enc = run_encoder(adapter, streams, cfg)
    stepper = MuEStepper(adapter, enc.out, enc.mask, cfg, decoding.num_beams, decoding.max_len)
    tokens = generate(stepper, streams.image.shape[0], decoding, streams.image.device)
    return RawBatch(batch, streams, enc, stepper, tokens)


def collect(adapter: ExitAdapter, raw: RawBatch, cfg: ExitConfig) -> BatchResult:
    """Per-sample exits, traces and analytic FLOPs from a finished batch."""
    streams, enc, stepper = raw.streams, raw.encoder, raw.stepper
    layers = torch.stack(stepper.layers, 1).tolist()  # [B, steps]
    sims = torch.stack(stepper.sims, 1).tolist()  # [B, steps, L-1]
    n_img = streams.image.shape[1]
    n_txt = streams.text_mask.sum(1).tolist()
    img_layers, txt_layers = enc.img_layers.tolist(), enc.txt_layers.tolist()
    # Work no exit can skip (e.g. Florence-2's vision tower) counts in every point's FLOPs, so that
    # flop_savings promises only what skipping layers can deliver.
    input_flops = getattr(adapter, "input_flops", None)
    fixed = input_flops(raw.batch) if input_flops else 0.0
    out = []
    for b in range(len(raw.tokens)):
        steps = [u for u in layers[b] if u > 0]
        flops = fixed + encoder_flops(adapter.dims, cfg.encoder_mode, n_img, int(n_txt[b]), img_layers[b],
                              txt_layers[b], adapter.n_enc_layers)
        flops += decoder_flops(adapter.dims, steps, n_img + int(n_txt[b]), adapter.n_dec_layers, cfg.kv_fill)
        out.append(SampleExits(
            tokens=raw.tokens[b], enc_img_layers=img_layers[b], enc_txt_layers=txt_layers[b], dec_layers=steps,
            enc_img_sims=enc.img_sims[b].tolist(), enc_txt_sims=enc.txt_sims[b].tolist(),
            dec_sims=[s for s, u in zip(sims[b], layers[b]) if u > 0], flops=flops,
        ))
    return BatchResult(out)


def run_batch(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, decoding: DecodingConfig) -> BatchResult:
    return collect(adapter, run_model(adapter, batch, cfg, decoding), cfg)
