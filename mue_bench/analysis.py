"""From results files to decisions: picking thresholds under a budget or with risk control.

Reads the parquet files, then delegates to the pure functions of pareto.py and bootstrap.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mue_bench.bootstrap import bootstrap_intervals
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.pareto import OBJECTIVES, LTTResult, candidates, learn_then_test
from mue_bench.spec import samples_path_for
from mue_bench.store import read_table


def load_results(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points and per-sample rows of one sweep."""
    points = read_table(path)
    if "point_id" not in points or "quality_rel" not in points:
        raise SpecError(f"{path}: not a mue-bench results file (no point_id / quality_rel columns)")
    return points, read_table(samples_path_for(path))


@dataclass
class BudgetPick:
    chosen: pd.Series | None
    top: pd.DataFrame  # best candidates with confidence intervals
    objective: str
    budget: float


def budget_pick(path: Path, budget: float, objective: str = "layer", top: int = 5, n_boot: int = 1000) -> BudgetPick:
    if objective not in OBJECTIVES:
        raise SpecError(f"--objective must be one of {', '.join(OBJECTIVES)} (got {objective!r})")
    points, samples = load_results(path)
    column = OBJECTIVES[objective]
    ranked = candidates(points, budget, column).head(top)
    if not ranked.empty:
        ci = bootstrap_intervals(ranked.assign(task=points["task"].iloc[0]), samples, n_boot=n_boot)
        ranked = ranked.merge(ci, on="point_id", how="left")
    return BudgetPick(None if ranked.empty else ranked.iloc[0], ranked, column, budget)


def threshold_path(points: pd.DataFrame) -> list[str]:
    """A data-independent order from the full model towards the most aggressive point: by the sum of the
    thresholds (no exit counts as 1), highest first; ties by τ_dec, τ_txt, τ_img, highest first."""
    ok = points[(points["status"] == "ok") & points["fixed_exit"].isna()].copy()
    for t in ("tau_img", "tau_txt", "tau_dec"):
        ok[t + "_c"] = ok[t].clip(upper=1.0)
    ok["_sum"] = ok["tau_img_c"] + ok["tau_txt_c"] + ok["tau_dec_c"]
    ok = ok.sort_values(["_sum", "tau_dec_c", "tau_txt_c", "tau_img_c", "point_id"],
                        ascending=[False, False, False, False, True], kind="mergesort")
    return ok["point_id"].tolist()


@dataclass
class RiskPick:
    result: LTTResult
    calibration: Path
    verification: pd.DataFrame | None  # realised risk per point on the held-out split


def _by_split(paths: list[Path], split: str) -> Path:
    for p in paths:
        points = read_table(p)
        if (points["split"] == split).all():
            return p
    raise SpecError(f"none of the results files was run on split {split!r}; sweep that split first")


def risk_pick(paths: list[Path], delta: float, confidence: float, calibration_split: str,
              verify_split: str | None = None) -> RiskPick:
    if not 0 < delta < 1:
        raise SpecError(f"--risk must lie in (0, 1) (got {delta})")
    if not 0 < confidence < 1:
        raise SpecError(f"--confidence must lie in (0, 1) (got {confidence})")
    cal_path = _by_split(paths, calibration_split)
    points, samples = load_results(cal_path)
    losses = {pid: 1.0 - g.sort_values("sample_index")["consistency"].to_numpy(float)
              for pid, g in samples.groupby("point_id")}
    if any(np.isnan(v).any() for v in losses.values()):
        raise MueBenchError(f"{cal_path}: some points have no consistency scores (their full model failed?)")
    result = learn_then_test(threshold_path(points), losses, delta, 1.0 - confidence)
    verification = None
    if verify_split is not None:
        _, ver_samples = load_results(_by_split(paths, verify_split))
        risk = 1.0 - ver_samples.groupby("point_id")["consistency"].mean()
        verification = risk.rename("realised_risk").reset_index()
    return RiskPick(result, cal_path, verification)
