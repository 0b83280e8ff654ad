"""From per-sample rows to per-point metrics (DESIGN.md §2): pure functions over DataFrames.

Everything here is computed from the per-sample table (plus corpus BLEU-4 / METEOR, which pycocoevalcap
aggregates from n-gram statistics rather than per-sample scores), so any metric in the results file
can be recomputed from the per-sample file.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mue_bench.mue.config import ExitConfig
from mue_bench.results import PointRow, point_frame
from mue_bench.scoring.paired import (
    PairedSaving,
    Pairs,
    drift,
    drift_warning,
    paired_saving,
    paired_wall,
    pairs_of,
)


def quality_metric(task: str) -> str:
    return "cider" if task == "caption" else "accuracy"


def _point_stats(rows: pd.DataFrame) -> dict:
    dec_counts = rows["dec_layers"].map(len)
    dec_total = rows["dec_layers"].map(sum)
    lat = rows["latency_s"].to_numpy(float)
    timed = lat[~np.isnan(lat)]  # with timing.batches, only the first batches of a point are timed
    mem = rows["peak_mem_bytes"].dropna()
    return {
        "n": len(rows),
        "n_timed": len(timed),
        "enc_img_layers": float(rows["enc_img_layers"].mean()),
        "enc_txt_layers": float(rows["enc_txt_layers"].mean()),
        "dec_layers": float(dec_total.sum() / max(dec_counts.sum(), 1)),
        "layers_used": int(rows["layers_used"].sum()),
        "flops_used": float(rows["flops"].sum()),
        # all n samples' model time; measured on the n_timed first samples when fewer, the same ones at every point
        "wall_s": float(timed.mean() * len(rows)) if len(timed) else float("nan"),
        "latency_p50_s": float(np.percentile(timed, 50)) if len(timed) else float("nan"),
        "latency_p90_s": float(np.percentile(timed, 90)) if len(timed) else float("nan"),
        "peak_mem_bytes": int(mem.max()) if len(mem) else None,
        "cider": float(rows["cider"].mean()),
        "rouge_l": float(rows["rouge_l"].mean()),
        "accuracy": float(rows["correct"].mean()),
        "consistency": float(rows["consistency"].mean()),
    }


def _ratio_saving(used: float, full: float) -> float:
    return 1.0 - used / full if full else float("nan")


def _time_columns(cfg: ExitConfig, s: dict, ref: dict, rows: pd.DataFrame, pairs: Pairs,
                  flop_savings: float) -> dict:
    """Time savings from the point's pairs with the full model (scoring/paired.py); the full model itself
    saves nothing, by definition, against itself."""
    if cfg.is_full:
        t = PairedSaving(0.0, 0.0, 0.0, 0)
        wall_full = ref["wall_s"]
    else:
        t, wall_full = paired_saving(pairs), paired_wall(rows)
    real = [v / flop_savings if flop_savings > 1e-9 else float("nan") for v in (t.saving, t.lo, t.hi)]
    return {"wall_full_s": wall_full, "time_savings": t.saving, "time_savings_lo": t.lo, "time_savings_hi": t.hi,
            "n_pairs": t.n, "realization": real[0], "realization_lo": real[1], "realization_hi": real[2]}


def summarise(samples: pd.DataFrame, configs: Mapping[str, ExitConfig], task: str,
              corpus: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """One row per point in `configs` that has samples, with savings against its reference point."""
    corpus = corpus or {}
    metric = quality_metric(task)
    groups = dict(tuple(samples.groupby("point_id", sort=False)))
    stats = {pid: _point_stats(g) for pid, g in groups.items()}
    pairs = {pid: pairs_of(g) for pid, g in groups.items()}
    warning = drift_warning(_largest_drift(groups, pairs))
    rows = []
    for pid, cfg in configs.items():
        if pid not in stats:
            continue
        s, ref = stats[pid], stats.get(cfg.reference_id)
        row = PointRow(**_identity(pid, cfg), status="ok", **s, quality_metric=metric, quality=s[metric],
                       bleu4=corpus.get(pid, {}).get("bleu4"), meteor=corpus.get(pid, {}).get("meteor"))
        if task != "caption":
            row.cider = row.rouge_l = row.bleu4 = row.meteor = None
        else:
            row.accuracy = None
        if ref is not None:  # else the reference failed: savings unknown
            row.layers_full, row.flops_full, row.quality_full = ref["layers_used"], ref["flops_used"], ref[metric]
            row.layer_savings = _ratio_saving(s["layers_used"], ref["layers_used"])
            row.flop_savings = _ratio_saving(s["flops_used"], ref["flops_used"])
            row.quality_rel = s[metric] / ref[metric] if ref[metric] else float("nan")
            for key, value in _time_columns(cfg, s, ref, groups[pid], pairs[pid], row.flop_savings).items():
                setattr(row, key, value)
        row.timing_warning = warning
        rows.append(row)
    return point_frame(rows)


def _largest_drift(groups: Mapping[str, pd.DataFrame], pairs: Mapping[str, Pairs]) -> float | None:
    """The full model's drift on each device that timed points (one per worker in a Ray sweep: the speeds of
    two devices are not one machine drifting), the largest in size."""
    by_origin: dict[tuple, list[Pairs]] = {}
    for pid, g in groups.items():
        if len(pairs[pid]):
            by_origin.setdefault(_origin(g), []).append(pairs[pid])
    changes = [c for c in map(drift, by_origin.values()) if c is not None]
    return max(changes, key=abs, default=None)


def _origin(rows: pd.DataFrame) -> tuple:
    first = rows.iloc[0]
    return first.get("host"), first.get("device_name")


def with_origins(points: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Each point's host and device name, from its samples (a failed point has none)."""
    first = samples.drop_duplicates("point_id").set_index("point_id")
    out = points.copy()
    for column in ("host", "device_name"):
        out[column] = out["point_id"].map(first[column]) if column in first else None
    return out


def _identity(pid: str, cfg: ExitConfig) -> dict:
    """The columns that say which point a row is."""
    return {"point_id": pid, "reference_id": cfg.reference_id, "is_full": cfg.is_full, "tau_img": cfg.tau_img,
            "tau_txt": cfg.tau_txt, "tau_dec": cfg.tau_dec, "encoder_mode": cfg.encoder_mode,
            "kv_fill": cfg.kv_fill, "dec_schedule": cfg.dec_schedule, "exit_scope": cfg.exit_scope,
            "head_every_layer": cfg.head_every_layer, "fixed_exit": list(cfg.fixed_exit) if cfg.fixed_exit else None}


def failed_rows(failures: Mapping[str, Mapping], configs: Mapping[str, ExitConfig]) -> pd.DataFrame:
    return point_frame([PointRow(**_identity(pid, configs[pid]), status="failed",
                                 error=f"{f['type']}: {f['message']}")
                        for pid, f in failures.items() if pid in configs])
