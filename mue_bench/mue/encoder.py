"""Modality-decomposed encoder exit (DESIGN.md §1).

`split`: image and text run through the shared layers as separate streams (the authors' code), each
stopping once its consecutive-layer similarity exceeds its threshold. `freeze`: one joint sequence;
a saturated modality's tokens stop being updated but still serve as keys/values for the others.
A layer runs while any sample needs it; finished rows keep their state, so each sample's result equals
what it would get alone. Adapters that allow it (`compacts`) run a layer on the rows that still need it
only, so a batch no longer costs its deepest exit. With `exit_scope = "batch"` (the authors' code) a stream's
similarity is one cosine over the whole batch, padding included, and the batch's stream exits together.
With `exit_sync = "lagged"` (sync.py) a layer is launched on the rows the host knew to be active before the
previous one, and the previous layer's flags are read while it is queued; a layer that turns out to have run for
nobody changed nothing (its rows are masked), so the loop just stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mue_bench.mue.adapter import ExitAdapter, Streams, compacts
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.similarity import batch_similarity, exit_fires, stream_similarity
from mue_bench.mue.sync import ExitSync, Flags


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
        fire = self.active & exit_fires(sim, self.tau, self.fixed, layer + 1)
        self.used = torch.where(fire, layer + 1, self.used)  # not `used[fire] =`: a boolean index syncs
        self.active = self.active & ~fire  # a new tensor: Flags keep the masks they were given


def _layer_on(adapter: ExitAdapter, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None,
              rows: torch.Tensor | None, stream: str = "joint") -> torch.Tensor:
    """Encoder layer `layer` for every row of h (at positions `queries`, all if None); with `rows` (batch
    compaction), only those rows are computed and the others come back unchanged."""
    if rows is None:
        return adapter.encoder_layer(layer, h, key_mask, queries, stream=stream)
    out = (h if queries is None else h[:, queries]).clone()
    out[rows] = adapter.encoder_layer_rows(layer, h[rows], key_mask[rows], rows, queries, stream=stream)
    return out


def _similarity(new: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, batch: bool, known: Flags, i: int = 0,
                part: slice | None = None) -> torch.Tensor:
    """Per sample over the stream's real positions (`mask`), or (batch scope) one value over the stream's active
    rows, at its positions `part` of each row. Those rows are the host's view (`known`'s mask i), exact whenever
    any row is active: a batch's stream exits together, so even the lagged view is exact until it has exited."""
    if batch:
        return batch_similarity(new, old, known.rows(i), part)
    return stream_similarity(new, old, mask)


def _run_split(adapter: ExitAdapter, h: torch.Tensor, mask: torch.Tensor, track: StreamExit, stream: str,
               batch: bool = False, sync: ExitSync = "eager") -> torch.Tensor:
    compact, lagged = compacts(adapter), sync == "lagged"
    known = Flags(track.active)  # what the host knows of the rows the next layer may have to update
    for layer in range(adapter.n_enc_layers):
        if layer and not lagged:
            known = Flags(track.active)
        if known.counts[0] == 0:
            break
        entering = Flags(track.active) if lagged and layer else known  # lagged: read after the launch
        rows = known.rows() if compact and known.counts[0] < len(h) else None
        new = torch.where(track.active[:, None, None], _layer_on(adapter, layer, h, mask, None, rows, stream), h)
        track.observe(layer, _similarity(new, h, mask, batch, known))
        if entering is not known:
            known = entering
            if known.counts[0] == 0:  # everyone had exited: the layer ran for nobody and changed nothing
                break
        h = new
    return h


def _run_joint(adapter: ExitAdapter, streams: Streams, img: StreamExit, txt: StreamExit, batch: bool = False,
               sync: ExitSync = "eager") -> torch.Tensor:
    h = torch.cat([streams.image, streams.text], 1)
    key_mask = torch.cat([streams.image_mask, streams.text_mask], 1)
    is_img = torch.zeros_like(key_mask)
    n_img = streams.image.shape[1]
    is_img[:, :n_img] = True
    img_mask, txt_mask = key_mask & is_img, key_mask & ~is_img  # each stream's real positions
    compact, lagged = compacts(adapter), sync == "lagged"

    def flags() -> Flags:
        return Flags(img.active, txt.active, img.active | txt.active)

    known = flags()
    for layer in range(adapter.n_enc_layers):
        if layer and not lagged:
            known = flags()
        img_on, txt_on, n_on = known.counts
        if n_on == 0:
            break
        entering = flags() if lagged and layer else known
        # Once a modality has saturated for the whole batch, compute queries for the other one only.
        queries = None if img_on and txt_on else slice(0, n_img) if img_on else slice(n_img, None)
        rows = known.rows(2) if compact and n_on < len(h) else None
        update = (is_img & img.active[:, None]) | (~is_img & txt.active[:, None])
        out = _layer_on(adapter, layer, h, key_mask, queries, rows)
        if queries is None:
            new = torch.where(update[..., None], out, h)
        else:
            new = h.clone()
            new[:, queries] = torch.where(update[:, queries, None], out, h[:, queries])
        img.observe(layer, _similarity(new, h, img_mask, batch, known, 0, slice(0, n_img)))
        txt.observe(layer, _similarity(new, h, txt_mask, batch, known, 1, slice(n_img, None)))
        if entering is not known:
            known = entering
            if known.counts[2] == 0:  # everyone had exited: the layer ran for nobody and changed nothing
                break
        h = new
    return h


def run_encoder(adapter: ExitAdapter, streams: Streams, cfg: ExitConfig, sync: ExitSync = "eager") -> EncoderResult:
    batch, device, n = streams.image.shape[0], streams.image.device, adapter.n_enc_layers
    fixed = cfg.fixed_exit or (None, None, None)
    img = StreamExit(batch, n, cfg.tau_img, fixed[0], device)
    txt = StreamExit(batch, n, cfg.tau_txt, fixed[1], device)
    batch_scope = cfg.exit_scope == "batch"
    if cfg.encoder_mode == "freeze":
        h = _run_joint(adapter, streams, img, txt, batch_scope, sync)
    else:
        h = torch.cat([_run_split(adapter, streams.image, streams.image_mask, img, "image", batch_scope, sync),
                       _run_split(adapter, streams.text, streams.text_mask, txt, "text", batch_scope, sync)], 1)
    mask = torch.cat([streams.image_mask, streams.text_mask], 1)
    return EncoderResult(adapter.encoder_norm(h), mask, img.used, txt.used, img.sims, txt.sims)
