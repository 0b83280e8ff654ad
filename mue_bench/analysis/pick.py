"""Picking thresholds under a quality budget: the largest saving that keeps quality_rel ≥ the budget,
with bootstrap intervals for the best candidates. `pick` and `candidates` are pure functions over points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mue_bench.analysis.bootstrap import bootstrap_intervals
from mue_bench.analysis.pareto import EPS, conservative_order, ok_points
from mue_bench.errors import SpecError
from mue_bench.results import load_results

OBJECTIVES = {"layer": "layer_savings", "flop": "flop_savings", "time": "time_savings"}


def check_budget(budget: float) -> float:
    """A quality budget is a fraction of the full model's quality: above 1 nothing but luck meets it, at 0 or
    below every point does, so either is a mistyped option rather than a question worth answering."""
    if not 0 < budget <= 1:
        raise SpecError(f"--budget {budget:g}: a budget is a fraction of the full model's quality, in (0, 1] "
                        "(e.g. 0.99 keeps 99%)")
    return budget


def pick(df: pd.DataFrame, budget: float, objective: str = "layer_savings") -> pd.Series | None:
    """The point with the largest saving whose quality_rel ≥ budget; None if there is none.

    Ties on the saving go to higher quality, then to the more conservative thresholds."""
    ranked = candidates(df, budget, objective)
    return None if ranked.empty else ranked.iloc[0]



def candidates(df: pd.DataFrame, budget: float, objective: str = "layer_savings") -> pd.DataFrame:
    """Every point meeting the budget, best first (the order `pick` uses). Time savings are ranked by the
    lower end of their 95% interval first: a point whose saving may be timing noise does not win on a lucky
    estimate, and one whose interval excludes zero beats one whose interval does not."""
    ok = ok_points(df)
    ok = ok[ok["quality_rel"] >= budget - EPS]
    ok = conservative_order(ok)
    keys = [objective, "quality_rel"]
    if objective == "time_savings" and "time_savings_lo" in ok:
        keys.insert(0, "time_savings_lo")
    return ok.sort_values(keys, ascending=False, kind="mergesort", na_position="last")


# What `pick --json` reports of the chosen point, besides its confidence intervals.
PICK_FIELDS = ("point_id", "tau_img", "tau_txt", "tau_dec", "encoder_mode", "kv_fill", "dec_schedule", "quality",
               "quality_rel", "layer_savings", "flop_savings", "time_savings", "consistency")


@dataclass
class BudgetPick:
    chosen: pd.Series | None
    top: pd.DataFrame  # best candidates with confidence intervals
    objective: str
    budget: float

    @property
    def chosen_id(self) -> str | None:
        return None if self.chosen is None else str(self.chosen.point_id)

    def to_json(self) -> dict:
        chosen = None if self.chosen is None else {k: v for k, v in self.chosen.items()
                                                   if k in PICK_FIELDS or k.endswith(("_lo", "_hi"))}
        return {"budget": self.budget, "objective": self.objective, "chosen": chosen}


def budget_pick(path: Path, budget: float, objective: str = "layer", top: int = 5, n_boot: int = 1000) -> BudgetPick:
    if objective not in OBJECTIVES:
        raise SpecError(f"--saving must be one of {', '.join(OBJECTIVES)} (got {objective!r})")
    points, samples = load_results(path)
    column = OBJECTIVES[objective]
    ranked = candidates(points, budget, column).head(top)
    if not ranked.empty:
        ci = bootstrap_intervals(ranked.assign(task=points["task"].iloc[0]), samples, n_boot=n_boot)
        ranked = ranked.merge(ci, on="point_id", how="left")
    return BudgetPick(None if ranked.empty else ranked.iloc[0], ranked, column, budget)




def pick_files(paths: list[Path], budget: float, objective: str = "layer", top: int = 5, risk: float | None = None,
               confidence: float = 0.95, calibration_split: str = "val", verify: str | None = None):
    """`mue-bench pick`: a budget pick on one results file, or with `risk` a Learn-then-Test pick calibrated
    on the file of `calibration_split` (and verified on the file of `verify`), which has no budget."""
    from mue_bench.analysis.risk import risk_pick

    if risk is not None:
        return risk_pick(paths, risk, confidence, calibration_split, verify)
    if len(paths) != 1:
        raise SpecError("give one results file (several only with --risk)")
    return budget_pick(paths[0], check_budget(budget), objective, top)
