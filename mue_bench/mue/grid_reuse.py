"""Evaluating a threshold grid without recomputing what its points share.

Every exit decision is `s > τ` (the decoder's τ through its schedule), so a run makes the same decisions, and
hence computes exactly the same thing, for every threshold that puts each of its recorded similarities on the
same side: above the similarities where it went on, at or below those where it exited. Such a run is a
*certificate* for those thresholds, and a point it certifies needs no model work at all. Three layers of sharing,
all exact (up to float noise from a sub-batch's different shape, which the engine's batch invariance bounds):
- Encoder. Its result depends on (encoder mode, exit scope, tau_img, tau_txt) only: points that differ in the
  decoder setting share it. Points are evaluated grouped by encoder setting; when the setting changes, a batch
  keeps the outputs it has if they certify the new thresholds (both streams of every row: in `freeze` mode the
  streams interact, and with `exit_scope = "batch"` the rows decide together), else it is encoded again.
- Generation, by encoder exits. A sample's generation depends on its encoder output, which its exits (e_img,
  e_txt) determine, and on the decoder setting, so different encoder thresholds that give a sample the same exits
  share its generations. Only the rows that need a new one are decoded, as one sub-batch.
- Generation, by certificate. Among the generations stored under a sample's encoder exits, one whose every
  decoder decision (every step, every layer where it went on or exited; with head_every_layer the last layer's
  too, which decides whether that layer's head runs) falls the same way under the new tau_dec and schedule is
  the new point's generation. A step whose threshold is inf (the official schedule's first third) decides
  nothing and constrains nothing. kv_fill decides what skipped layers get, so it is part of the key, except for a
  generation that skipped no layer, which is the same under every fill. FLOPs are computed from the exits for the
  new point's own setting, as for any result.
With `exit_scope = "batch"` a sample's exits and decisions depend on its batch-mates, so everything is stored and
certified per batch (keyed by every row's encoder exits; all rows' decisions certified together) and a batch is
decoded whole, never as a sub-batch. Fixed exits (`fixed_exit`) decide nothing: they share by exact setting only.

Memory: device tensors of one encoder setting, as without certificates (each batch holds one encoder result,
the current setting's, either kept or recomputed; nothing of an earlier setting survives its batch's turn).
On the host, one record per generation computed (ids, exits and similarities: a few KB per sample each), never
one per point: a point served by a certificate adds nothing.
Wall-clock timing cannot be shared: the runner times the first `timing.batches` batches of every point by running
them in full and uses this module for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.decoder import step_threshold
from mue_bench.mue.encoder import EncoderResult
from mue_bench.mue.engine import BatchResult, Decoded, decode, decoded_rows, encode, sample_exits
from mue_bench.mue.search import DecodingConfig


def encoder_setting(cfg: ExitConfig) -> Hashable:
    fixed = cfg.fixed_exit[:2] if cfg.fixed_exit else None
    return cfg.encoder_mode, cfg.tau_img, cfg.tau_txt, fixed, cfg.exit_scope


def decoder_setting(cfg: ExitConfig) -> Hashable:
    fixed = cfg.fixed_exit[2] if cfg.fixed_exit else None
    return cfg.tau_dec, cfg.kv_fill, cfg.dec_schedule, fixed, cfg.exit_scope, cfg.head_every_layer


def stream_certified(sims: torch.Tensor, used: torch.Tensor, tau: float) -> torch.Tensor:
    """[B] whether each row's stream run (similarities [B, L-1], layers used [B]) decides the same under `tau`:
    it went on after layers 1..used-1 and exited after layer `used` (unless it used all L). The comparison is
    the engine's own (`sim > tau`, StreamExit.observe), so float rounding cannot tell them apart."""
    n = sims.shape[1] + 1
    fires = sims > tau
    idx = torch.arange(n - 1, device=sims.device)[None]
    went_on = idx < (used - 1)[:, None]
    exited = idx == (used - 1)[:, None]
    return ~(fires & went_on).any(1) & ((fires & exited).any(1) | (used >= n))


def encoder_certified(enc: EncoderResult, cfg: ExitConfig) -> bool:
    """Whether every row's encoder run decides the same under cfg's tau_img and tau_txt (so its result is cfg's)."""
    ok = stream_certified(enc.img_sims, enc.img_layers, cfg.tau_img) & \
        stream_certified(enc.txt_sims, enc.txt_layers, cfg.tau_txt)
    return bool(ok.all())


@dataclass(frozen=True)
class DecoderCertificate:
    """Per generation step, the largest similarity where a run went on and the smallest where it exited (NaN
    where there was none): the run decides the same under any threshold that lies between them at every step."""

    went_on: np.ndarray  # [steps] float32
    exited: np.ndarray  # [steps] float32

    @classmethod
    def of(cls, runs: list[Decoded], n_layers: int, head_every_layer: bool, thresholds: list[float],
           ) -> DecoderCertificate:
        """The decisions of one sample's generation, or of a batch's rows together (batch scope), made under
        `thresholds` (one per step)."""
        steps = max(len(d.layers) for d in runs)
        went_on = np.full(steps, np.nan, np.float32)
        exited = np.full(steps, np.nan, np.float32)
        for d in runs:
            for t, used in enumerate(d.layers):
                if used == 0:  # finished: no decision
                    continue
                sims = d.sims[t]
                go, out = list(sims[: used - 1]), [sims[used - 1]] if used < n_layers else []
                final = d.final_sims[t] if head_every_layer and used == n_layers else math.nan
                if not math.isnan(final):  # the last layer's decision: whether its head ran
                    (out if np.float32(final) > np.float32(thresholds[t]) else go).append(final)
                go = [s for s in go if not math.isnan(s)]  # NaN never fires: it holds under any threshold
                if go:
                    went_on[t] = np.fmax(went_on[t], np.float32(max(go)))
                if out:
                    exited[t] = np.fmin(exited[t], np.float32(min(out)))
        return cls(went_on, exited)

    def admits(self, cfg: ExitConfig, max_len: int) -> bool:
        """Whether every decision falls the same way under cfg's tau_dec and schedule, compared as the engine does
        (a float32 similarity against the threshold cast to float32)."""
        thr = np.array([step_threshold(cfg, t, max_len) for t in range(len(self.went_on))]).astype(np.float32)
        with np.errstate(invalid="ignore"):
            if np.any(self.went_on > thr):
                return False
            return bool(np.all(np.isnan(self.exited) | (self.exited > thr)))


@dataclass
class _Stored:
    """Generations computed under one setting: one Decoded per row (one row unless batch scope)."""

    rows: list[Decoded]
    kv_fill: str | None  # None: no layer was skipped, so the generation is every fill's
    certificate: DecoderCertificate


def _certifiable_from(old: Hashable, new: Hashable) -> bool:
    """Whether encoder results of setting `old` may certify setting `new`: same mode and scope, neither fixed."""
    (mode, _, _, fixed, scope), (new_mode, _, _, new_fixed, new_scope) = old, new
    return mode == new_mode and scope == new_scope and fixed is None and new_fixed is None


class SharedEncoder:
    """Each batch's encoder result under the current encoder setting, computed once and shared by the setting's
    points; when the setting changes, a batch keeps the result it has where it certifies the new thresholds
    (`encoder_certified`), else is encoded again. Device tensors of one setting at a time."""

    def __init__(self, adapter: ExitAdapter, certificates: bool = True):
        self.adapter, self.certificates = adapter, certificates
        self._setting: Hashable = None
        self._encoded: dict[int, tuple[Streams, EncoderResult]] = {}  # batch index -> current setting's
        self._previous: dict[int, tuple[Streams, EncoderResult]] = {}  # the last setting's, until certified or dropped
        self.executions = 0  # encoder stream layers run, summed over samples (the owner takes them)
        self.certified = 0  # batches' encoder results a certificate served with no model work

    def get(self, batch_index: int, batch: Any, cfg: ExitConfig) -> tuple[Streams, EncoderResult]:
        setting = encoder_setting(cfg)
        if setting != self._setting:
            certifiable = self.certificates and self._setting is not None and _certifiable_from(self._setting, setting)
            self._previous = {**self._previous, **self._encoded} if certifiable else {}
            self._setting, self._encoded = setting, {}
        if batch_index not in self._encoded:
            kept = self._previous.pop(batch_index, None)
            if kept is not None and encoder_certified(kept[1], cfg):
                self._encoded[batch_index] = kept
                self.certified += 1
            else:
                del kept  # before encoding again: one encoder result per batch at a time
                self._encoded[batch_index] = encode(self.adapter, batch, cfg)
                enc = self._encoded[batch_index][1]
                self.executions += int((enc.img_layers + enc.txt_layers).sum())
        return self._encoded[batch_index]

    def take_executions(self) -> int:
        n, self.executions = self.executions, 0
        return n


class GridReuse:
    def __init__(self, adapter: ExitAdapter, decoding: DecodingConfig, certificates: bool = True):
        self.adapter, self.decoding, self.certificates = adapter, decoding, certificates
        self._encoders = SharedEncoder(adapter, certificates)
        self._decoded: dict[tuple, Decoded] = {}  # exact decoder settings (no certificates, or fixed exits)
        self._stored: dict[tuple, list[_Stored]] = {}  # per sample (or batch) and encoder exits
        self._executions = 0  # decoder layers per token, summed over samples (the encoder's: self._encoders)
        self._certified_generations_n = 0  # samples' generations a certificate served with no model work

    @property
    def certified(self) -> dict[str, int]:
        """What certificates served with no model work: batches' encoder results, samples' generations."""
        return {"encodings": self._encoders.certified, "generations": self._certified_generations_n}

    def take_executions(self) -> int:
        """Layer executions since the last call (each point's share, for the sweep's cost accounting)."""
        n, self._executions = self._executions + self._encoders.take_executions(), 0
        return n

    def evaluate(self, batch_index: int, first_sample: int, batch: Any, cfg: ExitConfig) -> BatchResult:
        """The batch's per-sample records under `cfg`; `first_sample` is its first sample's index in the
        dataset (the key under which generations are remembered)."""
        streams, enc = self._encoders.get(batch_index, batch, cfg)
        img, txt = enc.img_layers.tolist(), enc.txt_layers.tolist()
        if self.certificates and cfg.fixed_exit is None:
            decoded = self._certified_generations(first_sample, img, txt, enc, cfg)
        else:
            decoded = self._exact_generations(first_sample, img, txt, enc, cfg)
        n_img, n_txt = streams.image.shape[1], streams.text_mask.sum(1).tolist()
        fixed = self.adapter.input_flops(batch)
        return BatchResult([sample_exits(self.adapter, cfg, enc, b, n_img, int(n_txt[b]), dec, fixed)
                            for b, dec in enumerate(decoded)])

    # --- decoder ---------------------------------------------------------------------------------------
    def _decode(self, enc: EncoderResult, rows: list[int], cfg: ExitConfig) -> list[Decoded]:
        index = torch.tensor(rows, device=enc.out.device)
        stepper, tokens = decode(self.adapter, enc.out[index], enc.mask[index], cfg, self.decoding)
        decoded = decoded_rows(stepper, tokens)
        self._executions += sum(sum(d.layers) for d in decoded)
        return decoded

    def _exact_generations(self, first: int, img: list[int], txt: list[int], enc: EncoderResult,
                           cfg: ExitConfig) -> list[Decoded]:
        """Shared by encoder exits and exact decoder setting only."""
        if cfg.exit_scope == "batch":
            whole = (first, cfg.encoder_mode, tuple(img), tuple(txt), decoder_setting(cfg))
            keys: list[tuple] = [(whole, b) for b in range(len(img))]
        else:
            keys = [(first + b, cfg.encoder_mode, img[b], txt[b], decoder_setting(cfg)) for b in range(len(img))]
        missing = [b for b, k in enumerate(keys) if k not in self._decoded]
        if missing and cfg.exit_scope == "batch":
            missing = list(range(len(img)))
        if missing:
            for b, dec in zip(missing, self._decode(enc, missing, cfg)):
                self._decoded[keys[b]] = dec
        return [self._decoded[k] for k in keys]

    def _certified_generations(self, first: int, img: list[int], txt: list[int], enc: EncoderResult,
                               cfg: ExitConfig) -> list[Decoded]:
        common = (cfg.encoder_mode, cfg.exit_scope, cfg.head_every_layer)
        if cfg.exit_scope == "batch":
            groups = [((first, tuple(img), tuple(txt), *common), list(range(len(img))))]
        else:
            groups = [((first + b, img[b], txt[b], *common), [b]) for b in range(len(img))]
        found: dict[int, Decoded] = {}
        missing: list[tuple[tuple, list[int]]] = []
        for key, rows in groups:
            hit = self._find(key, cfg)
            if hit is None:
                missing.append((key, rows))
            else:
                found.update(zip(rows, hit.rows))
                self._certified_generations_n += len(rows)
        if missing:
            rows = [b for _, group in missing for b in group]
            decoded = dict(zip(rows, self._decode(enc, rows, cfg)))
            for key, group in missing:
                self._store(key, [decoded[b] for b in group], cfg)
            found.update(decoded)
        return [found[b] for b in range(len(img))]

    def _find(self, key: tuple, cfg: ExitConfig) -> _Stored | None:
        for stored in self._stored.get(key, ()):
            if stored.kv_fill in (None, cfg.kv_fill) and stored.certificate.admits(cfg, self.decoding.max_len):
                return stored
        return None

    def _store(self, key: tuple, rows: list[Decoded], cfg: ExitConfig) -> None:
        n_layers = self.adapter.n_dec_layers
        skipped = any(0 < u < n_layers for d in rows for u in d.layers)
        thresholds = [step_threshold(cfg, t, self.decoding.max_len) for t in range(max(len(d.layers) for d in rows))]
        certificate = DecoderCertificate.of(rows, n_layers, cfg.head_every_layer, thresholds)
        self._stored.setdefault(key, []).append(_Stored(rows, cfg.kv_fill if skipped else None, certificate))
