"""Modality-decomposed encoder exit (DESIGN.md §1).

`split`: image and text run through the shared layers as separate streams (the authors' code), each
stopping once its consecutive-layer similarity exceeds its threshold. `freeze`: one joint sequence;
a saturated modality's tokens stop being updated but still serve as keys/values for the others.
A layer runs while any sample needs it; finished rows keep their state, so each sample's result equals
what it would get alone. Adapters that allow it (`compacts`) run a layer on the rows that still need it
only, so a batch no longer costs its deepest exit. With `exit_scope = "batch"` (the authors' code) a stream's
similarity is one cosine over the whole batch, padding included, and the batch's stream exits together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mue_bench.mue.adapter import ExitAdapter, Streams, compacts
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.similarity import batch_similarity, stream_similarity


@dataclass
class EncoderResult:
    out: torch.Tensor  # [B, Ni + Nt, D] after the final norm, [image; text]
    mask: torch.Tensor  # [B, Ni + Nt]
    img_layers: torch.Tensor  # [B] layers used by the image stream
    txt_layers: torch.Tensor  # [B]
    img_sims: torch.Tensor  # [B, L-1] s_l for l = 1..L-1 (NaN where not computed)
    txt_sims: torch.Tensor


class StreamExit:
    """Exit bookkeeping of one stream over a batch: who is still active, layers used, similarities."""

    def __init__(self, batch: int, n_layers: int, tau: float, fixed: int | None, device: torch.device):
        self.tau, self.fixed, self.n_layers = tau, fixed, n_layers
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.used = torch.full((batch,), n_layers, dtype=torch.long, device=device)
        self.sims = torch.full((batch, n_layers - 1), float("nan"), device=device)

    def observe(self, layer: int, sim: torch.Tensor) -> None:
        """Layer `layer` (0-based) just ran; stop the samples whose similarity passed the threshold."""
        if layer >= self.n_layers - 1:
            return
        self.sims[:, layer] = torch.where(self.active, sim, self.sims[:, layer])
        if self.fixed is not None:  # benchmarking mode: exit after exactly `fixed` layers
            fire = self.active & (layer + 1 >= self.fixed)
        else:
            fire = self.active & (sim > self.tau)
        self.used[fire] = layer + 1
        self.active &= ~fire


def _layer_on(adapter: ExitAdapter, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None,
              rows: torch.Tensor | None, stream: str = "joint") -> torch.Tensor:
    """Encoder layer `layer` for every row of h (at positions `queries`, all if None); with `rows` (batch
    compaction), only those rows are computed and the others come back unchanged."""
    if rows is None:
        return adapter.encoder_layer(layer, h, key_mask, queries, stream=stream)
    out = (h if queries is None else h[:, queries]).clone()
    out[rows] = adapter.encoder_layer_rows(layer, h[rows], key_mask[rows], rows, queries, stream=stream)
    return out


def _similarity(new: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, track: StreamExit, batch: bool,
                positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample over its real positions of the stream, or (batch scope) one value over the active rows."""
    if batch:
        return batch_similarity(new, old, track.active, positions)
    return stream_similarity(new, old, mask if positions is None else mask & positions)


def _run_split(adapter: ExitAdapter, h: torch.Tensor, mask: torch.Tensor, track: StreamExit, stream: str,
               batch: bool = False) -> torch.Tensor:
    compact = compacts(adapter)
    for layer in range(adapter.n_enc_layers):
        n_active = int(track.active.sum())  # one host sync per layer
        if n_active == 0:
            break
        rows = track.active.nonzero().squeeze(1) if compact and n_active < len(h) else None
        new = torch.where(track.active[:, None, None], _layer_on(adapter, layer, h, mask, None, rows, stream), h)
        track.observe(layer, _similarity(new, h, mask, track, batch))
        h = new
    return h


def _run_joint(adapter: ExitAdapter, streams: Streams, img: StreamExit, txt: StreamExit, batch: bool = False,
               ) -> torch.Tensor:
    h = torch.cat([streams.image, streams.text], 1)
    key_mask = torch.cat([streams.image_mask, streams.text_mask], 1)
    is_img = torch.zeros_like(key_mask)
    is_img[:, : streams.image.shape[1]] = True
    n_img = streams.image.shape[1]
    compact = compacts(adapter)
    for layer in range(adapter.n_enc_layers):
        on = img.active | txt.active
        img_on, txt_on, n_on = torch.stack([img.active.sum(), txt.active.sum(), on.sum()]).tolist()  # one sync
        if n_on == 0:
            break
        # Once a modality has saturated for the whole batch, compute queries for the other one only.
        queries = None if img_on and txt_on else slice(0, n_img) if img_on else slice(n_img, None)
        rows = on.nonzero().squeeze(1) if compact and n_on < len(on) else None
        update = (is_img & img.active[:, None]) | (~is_img & txt.active[:, None])
        out = _layer_on(adapter, layer, h, key_mask, queries, rows)
        if queries is None:
            new = torch.where(update[..., None], out, h)
        else:
            new = h.clone()
            new[:, queries] = torch.where(update[:, queries, None], out, h[:, queries])
        img.observe(layer, _similarity(new, h, key_mask, img, batch, is_img[0]))
        txt.observe(layer, _similarity(new, h, key_mask, txt, batch, ~is_img[0]))
        h = new
    return h


def run_encoder(adapter: ExitAdapter, streams: Streams, cfg: ExitConfig) -> EncoderResult:
    batch, device, n = streams.image.shape[0], streams.image.device, adapter.n_enc_layers
    fixed = cfg.fixed_exit or (None, None, None)
    img = StreamExit(batch, n, cfg.tau_img, fixed[0], device)
    txt = StreamExit(batch, n, cfg.tau_txt, fixed[1], device)
    batch_scope = cfg.exit_scope == "batch"
    if cfg.encoder_mode == "freeze":
        h = _run_joint(adapter, streams, img, txt, batch_scope)
    else:
        h = torch.cat([_run_split(adapter, streams.image, streams.image_mask, img, "image", batch_scope),
                       _run_split(adapter, streams.text, streams.text_mask, txt, "text", batch_scope)], 1)
    mask = torch.cat([streams.image_mask, streams.text_mask], 1)
    return EncoderResult(adapter.encoder_norm(h), mask, img.used, txt.used, img.sims, txt.sims)
