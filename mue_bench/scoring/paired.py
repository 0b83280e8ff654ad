"""Time savings from paired timings, with their uncertainty, and the drift alarm.

A point's time saving is not its time over a full-model time measured minutes earlier: on a busy machine (or
a GPU whose clocks and neighbours change) that compares two different machines. Every timed batch instead
runs the point and its full model back to back, in alternating order, and the saving is 1 - the median of
the per-pair time ratios, with a bootstrap interval over pairs. The full model's own pair times, in the order
they were measured, show whether the machine changed during the sweep (the drift alarm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
N_BOOT = 2000
# The full model got this much slower or faster (median of the last quarter of the sweep against the first,
# batch by batch) before the time columns are flagged. On the 2-core development VM a quiet demo sweep drifted
# up to 16%; one with a CPU load switched on halfway, 315% (benchmarks/timing_noise.py).
DRIFT_LIMIT = 0.25
MIN_DRIFT_PAIRS = 8


@dataclass(frozen=True)
class Pairs:
    point_s: np.ndarray
    ref_s: np.ndarray
    ref_first: np.ndarray
    at: np.ndarray
    batch: np.ndarray

    def __len__(self) -> int:
        return len(self.point_s)


def pairs_of(rows: pd.DataFrame) -> Pairs:
    """The pairs of one point's timed batches (every row of a batch carries its batch's lists)."""
    first = rows.drop_duplicates("batch_index")
    lists = {c: [x for v in first[c] for x in (v if v is not None else [])]
             for c in ("pair_s", "pair_ref_s", "pair_ref_first", "pair_at")}
    batch = [b for b, v in zip(first["batch_index"], first["pair_s"]) for _ in (v if v is not None else [])]
    return Pairs(np.asarray(lists["pair_s"], float), np.asarray(lists["pair_ref_s"], float),
                 np.asarray(lists["pair_ref_first"], bool), np.asarray(lists["pair_at"], float),
                 np.asarray(batch, int))


def paired_wall(rows: pd.DataFrame) -> float:
    """The full model's time for all of a point's samples, from its pair times: per timed batch the median
    over the batch's pairs, shared among the batch's samples, averaged over timed samples, times n."""
    timed = rows[rows["pair_ref_s"].map(lambda v: v is not None and len(v) > 0)]
    if timed.empty:
        return float("nan")
    size = timed.groupby("batch_index")["batch_index"].transform("size")
    share = timed["pair_ref_s"].map(np.median) / size
    return float(share.mean() * len(rows))


@dataclass(frozen=True)
class PairedSaving:
    saving: float
    lo: float
    hi: float
    n: int


def paired_saving(pairs: Pairs, seed: int = 0) -> PairedSaving:
    """1 - median(point / reference) over pairs, and its percentile-bootstrap interval (NaN below 2 pairs)."""
    n = len(pairs)
    if n == 0:
        return PairedSaving(float("nan"), float("nan"), float("nan"), 0)
    ratio = pairs.point_s / pairs.ref_s
    saving = 1.0 - float(np.median(ratio))
    if n < 2:
        return PairedSaving(saving, float("nan"), float("nan"), n)
    idx = np.random.default_rng(seed).integers(n, size=(N_BOOT, n))
    medians = np.median(ratio[idx], axis=1)
    alpha = (1 - LEVEL) / 2
    hi_ratio, lo_ratio = np.quantile(medians, [1 - alpha, alpha])
    return PairedSaving(saving, 1.0 - float(hi_ratio), 1.0 - float(lo_ratio), n)


def drift(pairs: list[Pairs]) -> float | None:
    """Relative change of the full model's speed over the sweep: its pair times, each divided by the median of
    the same batch's (batches differ in cost), the last quarter of the sweep in time order against the first.
    None with fewer than MIN_DRIFT_PAIRS pairs."""
    ref = np.concatenate([p.ref_s for p in pairs]) if pairs else np.array([])
    if len(ref) < MIN_DRIFT_PAIRS:
        return None
    batch = np.concatenate([p.batch for p in pairs])
    at = np.concatenate([p.at for p in pairs])
    medians = pd.Series(ref).groupby(batch).transform("median").to_numpy()
    norm = (ref / medians)[np.argsort(at, kind="stable")]
    q = len(norm) // 4
    return float(np.median(norm[-q:]) / np.median(norm[:q]) - 1.0)


def drift_warning(change: float | None) -> str | None:
    if change is None or abs(change) <= DRIFT_LIMIT:
        return None
    return (f"the full model ran {abs(change):.0%} {'slower' if change > 0 else 'faster'} at the end of the sweep "
            "than at its start: the machine's speed changed; pairing cancels slow drift, but not load that comes "
            "and goes within a pair, so read the time savings with care and rerun on a quiet machine")
