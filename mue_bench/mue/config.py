"""One exit setting: the threshold triple plus the choices DESIGN.md §1 says must be recorded, and its
identity: the one place that renders a setting to its point id, used for resume, logs, files and plots."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

EncoderMode = Literal["split", "freeze"]
KVFill = Literal["copy", "propagate", "official", "none"]
ExitScope = Literal["sample", "batch"]
DecSchedule = Literal["official", "constant"]
NO_EXIT = 2.0  # any threshold above 1 never fires: cosine similarity is at most 1


@dataclass(frozen=True)
class ExitConfig:
    tau_img: float = NO_EXIT
    tau_txt: float = NO_EXIT
    tau_dec: float = NO_EXIT
    encoder_mode: EncoderMode = "split"
    kv_fill: KVFill = "copy"
    dec_schedule: DecSchedule = "constant"
    # Benchmarking without a trained model: exit every stream/token after exactly this many layers
    # (image, text, decoder), ignoring similarity. None = similarity-based exits.
    fixed_exit: tuple[int, int, int] | None = None
    # The authors' code (parity): "batch" decides on the similarity of the whole batch flattened (every sample,
    # beam and padding position one vector), so the batch exits together; "sample" is MuE as the paper states it.
    exit_scope: ExitScope = "sample"
    # The authors' code runs the LM head after every executed decoder layer at inference (its output unused),
    # a cost their "expected inference time" contains.
    head_every_layer: bool = False

    @property
    def is_full(self) -> bool:
        return self.fixed_exit is None and min(self.tau_img, self.tau_txt, self.tau_dec) > 1

    def reference(self) -> ExitConfig:
        """The full model this point is measured against: same encoder mode, nothing exits (kv_fill, schedule
        and exit scope change nothing when nothing exits); a head at every layer is work the full model does too."""
        return ExitConfig(encoder_mode=self.encoder_mode, head_every_layer=self.head_every_layer)

    def canonical(self) -> ExitConfig:
        """One spelling per distinct computation: every no-exit setting is its reference, and every threshold
        above 1 is NO_EXIT (all of them never fire)."""
        if self.is_full:
            return self.reference()
        return replace(self, **{k: NO_EXIT for k in ("tau_img", "tau_txt", "tau_dec") if getattr(self, k) > 1})

    @property
    def point_id(self) -> str:
        return point_id(self)

    @property
    def reference_id(self) -> str:
        """The point id of the full model every saving of this point divides by."""
        return point_id(self.reference())


def format_tau(t: float) -> str:
    """A threshold as ids and tables show it: "off" above 1, else the shortest text that reads back as the
    same float (so distinct thresholds never share a name: 0.99995 is not 1), without a trailing ".0"."""
    if t > 1:
        return "off"
    text = repr(float(t))
    return text.removesuffix(".0")


def point_id(cfg: ExitConfig) -> str:
    """Stable, filename-safe name of a grid point, e.g. img=0.95-txt=0.99-dec=0.9-split-copy-constant."""
    quirks = ("-batch" if cfg.exit_scope == "batch" else "") + ("-head" if cfg.head_every_layer else "")
    if cfg.is_full:
        return f"full-{cfg.encoder_mode}" + ("-head" if cfg.head_every_layer else "")
    if cfg.fixed_exit is not None:
        head = "fixed={}.{}.{}".format(*cfg.fixed_exit)
    else:
        head = f"img={format_tau(cfg.tau_img)}-txt={format_tau(cfg.tau_txt)}-dec={format_tau(cfg.tau_dec)}"
    return f"{head}-{cfg.encoder_mode}-{cfg.kv_fill}-{cfg.dec_schedule}{quirks}"


def decoder_threshold(tau: float, step: int, max_len: int, schedule: DecSchedule) -> float:
    """The threshold in force at generation step `step` (0-based); inf means no exit at this step.

    `official` is the authors' sequence_generator.py: no exit in the first third of max_len, then a
    threshold that starts a little above 0.9·τ and decays towards it. τ > 1 never exits either way.
    `max_len` is their generator's: int(max_len_a · src_len + max_len_b), the steps before the one that may
    only emit EOS (a DecodingConfig's max_len minus one).
    """
    if tau > 1:
        return math.inf
    if schedule == "constant":
        return tau
    if step < (max_len + 1) / 3:
        return math.inf
    return 0.9 * tau + 0.1 * math.exp(-(step + 1) / (max_len + 1))
