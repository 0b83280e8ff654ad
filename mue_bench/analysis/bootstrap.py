"""Bootstrap confidence intervals over samples, from the per-sample file.

A point and its full-model reference are resampled with the same sample indices, so the interval of
quality_rel and of the savings reflects the pairing. CIDEr-D's per-sample scores use document
frequencies from the whole split; resampling them treats those frequencies as fixed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mue_bench.scoring.summarise import quality_metric

_QUALITY_COLUMN = {"cider": "cider", "accuracy": "correct"}


def _per_sample(samples: pd.DataFrame, pid: str, column: str) -> np.ndarray:
    rows = samples[samples["point_id"] == pid].sort_values("sample_index")
    return rows[column].to_numpy(float)


def bootstrap_intervals(points: pd.DataFrame, samples: pd.DataFrame, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """[lo, hi] of quality_rel, layer_savings and flop_savings for every ok point with a reference."""
    qcol = _QUALITY_COLUMN[quality_metric(points["task"].iloc[0])]
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out = []
    for p in points[points["status"] == "ok"].itertuples():
        ref_id = p.reference_id
        if not (samples["point_id"] == ref_id).any():
            continue
        q, q0 = _per_sample(samples, p.point_id, qcol), _per_sample(samples, ref_id, qcol)
        lay, lay0 = _per_sample(samples, p.point_id, "layers_used"), _per_sample(samples, ref_id, "layers_used")
        fl, fl0 = _per_sample(samples, p.point_id, "flops"), _per_sample(samples, ref_id, "flops")
        idx = rng.integers(len(q), size=(n_boot, len(q)))
        with np.errstate(divide="ignore", invalid="ignore"):
            stats = {
                "quality_rel": q[idx].mean(1) / q0[idx].mean(1),
                "layer_savings": 1 - lay[idx].sum(1) / lay0[idx].sum(1),
                "flop_savings": 1 - fl[idx].sum(1) / fl0[idx].sum(1),
            }
        row = {"point_id": p.point_id}
        for name, values in stats.items():
            values = np.where(np.isfinite(values), values, np.nan)  # a resample with zero reference quality
            lo, hi = np.nanquantile(values, [alpha, 1 - alpha]) if np.isfinite(values).any() else (np.nan, np.nan)
            row[f"{name}_lo"], row[f"{name}_hi"] = float(lo), float(hi)
        out.append(row)
    return pd.DataFrame(out)
