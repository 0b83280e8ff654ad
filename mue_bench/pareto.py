"""Pure analysis over results DataFrames: the Pareto front, picking under a quality budget, and
Learn-then-Test risk control. No I/O, no plotting: tiny hand-made frames test all of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binom

OBJECTIVES = {"layer": "layer_savings", "flop": "flop_savings", "time": "time_savings"}
_EPS = 1e-12


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df else df


def _conservative_order(df: pd.DataFrame) -> pd.DataFrame:
    """Higher thresholds first: on ties, the point that exits less eagerly wins."""
    keys = [c for c in ("tau_img", "tau_txt", "tau_dec") if c in df]
    return df.sort_values(keys, ascending=False, kind="mergesort") if keys else df


def pareto_front(df: pd.DataFrame, x: str = "layer_savings", y: str = "quality_rel") -> pd.DataFrame:
    """Points no other point beats on both x and y (higher is better on both), sorted by x.

    Of several points at the same (x, y) only the most conservative is kept."""
    pts = _conservative_order(_ok(df).dropna(subset=[x, y]))
    pts = pts.drop_duplicates(subset=[x, y], keep="first")
    pts = pts.sort_values([x, y], ascending=[False, False], kind="mergesort")
    keep, best_y = [], -math.inf
    for idx, yv in zip(pts.index, pts[y]):
        if yv > best_y + _EPS:
            keep.append(idx)
            best_y = yv
    return pts.loc[keep].sort_values(x, kind="mergesort")


def pick(df: pd.DataFrame, budget: float, objective: str = "layer_savings") -> pd.Series | None:
    """The point with the largest saving whose quality_rel ≥ budget; None if there is none.

    Ties on the saving go to higher quality, then to the more conservative thresholds."""
    ranked = candidates(df, budget, objective)
    return None if ranked.empty else ranked.iloc[0]


def candidates(df: pd.DataFrame, budget: float, objective: str = "layer_savings") -> pd.DataFrame:
    """Every point meeting the budget, best first (the order `pick` uses)."""
    ok = _ok(df)
    ok = ok[ok["quality_rel"] >= budget - _EPS]
    ok = _conservative_order(ok)
    return ok.sort_values([objective, "quality_rel"], ascending=[False, False], kind="mergesort")


# --- Learn then Test -------------------------------------------------------------------------------

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


def dominated_area(df: pd.DataFrame, x: str = "layer_savings", y: str = "quality_rel") -> float:
    """Area of the (x, y) region dominated by the front, from the origin: larger is a better trade-off."""
    front = pareto_front(df, x, y)
    area, prev_x = 0.0, 0.0
    for xv, yv in zip(front[x], front[y]):  # x ascending, y descending along the front
        if xv > prev_x:
            area += (xv - prev_x) * yv
            prev_x = xv
    return float(area)
