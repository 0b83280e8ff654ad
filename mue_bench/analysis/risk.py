"""Risk-controlled picking with Learn then Test (Angelopoulos et al.): fixed-sequence testing along a
threshold path fixed before looking at losses, with Hoeffding-Bentkus p-values, so that with probability
≥ 1 - epsilon the mean disagreement with the full model at the chosen point is ≤ delta."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binom

from mue_bench.errors import MueBenchError, SpecError
from mue_bench.results import load_results, read_table


def _h1(a: float, b: float) -> float:
    """Bernoulli KL divergence kl(a || b), with 0·ln 0 = 0."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out



def hb_p_value(risk_hat: float, n: int, delta: float) -> float:
    """Hoeffding-Bentkus p-value for H0: risk > delta, given mean loss risk_hat over n samples in [0, 1]."""
    hoeffding = math.exp(-n * _h1(min(risk_hat, delta), delta))
    bentkus = math.e * float(binom.cdf(math.ceil(n * risk_hat), n, delta))
    return min(hoeffding, bentkus, 1.0)



@dataclass
class LTTResult:
    chosen: str | None  # point id of the last accepted point, None if even the first fails
    table: pd.DataFrame  # the path with risk_hat, p_value, accepted



def learn_then_test(path: Sequence[str], losses: dict[str, np.ndarray], delta: float, epsilon: float) -> LTTResult:
    """Fixed-sequence testing along `path` (ordered from the full model to the most aggressive point,
    fixed before looking at the losses): accept while p ≤ epsilon, stop at the first failure.

    With probability ≥ 1 - epsilon over the calibration draw, the risk at the returned point is ≤ delta."""
    rows, chosen, testing = [], None, True
    for pid in path:
        loss = np.asarray(losses[pid], float)
        risk_hat = float(loss.mean())
        p = hb_p_value(risk_hat, len(loss), delta)
        accepted = testing and p <= epsilon
        testing = accepted
        if accepted:
            chosen = pid
        rows.append({"point_id": pid, "n": len(loss), "risk_hat": risk_hat, "p_value": p, "accepted": accepted})
    return LTTResult(chosen, pd.DataFrame(rows))



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
    delta: float
    confidence: float

    @property
    def chosen_id(self) -> str | None:
        return self.result.chosen

    def path_table(self) -> pd.DataFrame:
        """The tested path, with the realised risk on the held-out split where one was given."""
        table = self.result.table
        return table if self.verification is None else table.merge(self.verification, on="point_id", how="left")

    def to_json(self) -> dict:
        return {"risk": self.delta, "confidence": self.confidence, "chosen": self.result.chosen,
                "path": self.path_table().to_dict("records")}

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
    return RiskPick(result, cal_path, verification, delta, confidence)

