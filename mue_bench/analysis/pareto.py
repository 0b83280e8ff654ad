"""The Pareto front of a sweep's points and the area it dominates: pure functions over DataFrames."""

from __future__ import annotations

import math

import pandas as pd

EPS = 1e-12


def ok_points(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df else df


def conservative_order(df: pd.DataFrame) -> pd.DataFrame:
    """Higher thresholds first: on ties, the point that exits less eagerly wins."""
    keys = [c for c in ("tau_img", "tau_txt", "tau_dec") if c in df]
    return df.sort_values(keys, ascending=False, kind="mergesort") if keys else df


def pareto_front(df: pd.DataFrame, x: str = "layer_savings", y: str = "quality_rel") -> pd.DataFrame:
    """Points no other point beats on both x and y (higher is better on both), sorted by x.

    Of several points at the same (x, y) only the most conservative is kept."""
    pts = conservative_order(ok_points(df).dropna(subset=[x, y]))
    pts = pts.drop_duplicates(subset=[x, y], keep="first")
    pts = pts.sort_values([x, y], ascending=[False, False], kind="mergesort")
    keep, best_y = [], -math.inf
    for idx, yv in zip(pts.index, pts[y]):
        if yv > best_y + EPS:
            keep.append(idx)
            best_y = yv
    return pts.loc[keep].sort_values(x, kind="mergesort")


def dominated_area(df: pd.DataFrame, x: str = "layer_savings", y: str = "quality_rel") -> float:
    """Area of the (x, y) region dominated by the front, from the origin: larger is a better trade-off."""
    front = pareto_front(df, x, y)
    area, prev_x = 0.0, 0.0
    for xv, yv in zip(front[x], front[y]):  # x ascending, y descending along the front
        if xv > prev_x:
            area += (xv - prev_x) * yv
            prev_x = xv
    return float(area)
