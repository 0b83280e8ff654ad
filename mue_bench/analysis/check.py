"""The CI regression gate: compare a fresh sweep with a committed baseline.

At the thresholds the baseline picks under the budget, the current results must keep quality_rel ≥ the
budget and lose no more than `savings_tolerance` of layer savings; the area dominated by the current
Pareto front may shrink by at most `area_tolerance` (relative). Wall-clock figures are not gated: they
belong to the machine, not to the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mue_bench.analysis.pareto import dominated_area
from mue_bench.analysis.pick import check_budget, pick
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.results import checked_points, read_table

# What the gate reads of each file (older baselines lack later columns, and need not have them).
CHECK_COLUMNS = ["point_id", "status", "is_full", "tau_img", "tau_txt", "tau_dec", "quality_rel", "layer_savings",
                 "flop_savings"]


@dataclass
class Check:
    name: str
    baseline: float
    current: float
    limit: str
    ok: bool


@dataclass
class CheckReport:
    point_id: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict:
        return {"ok": self.ok, "point_id": self.point_id, "checks": [asdict(c) for c in self.checks]}

    def markdown(self) -> str:
        lines = [f"### mue-bench check: {'passed' if self.ok else 'FAILED'}", "",
                 f"Baseline pick: `{self.point_id}`", "",
                 "| check | baseline | current | limit | result |", "|---|---:|---:|---|---|"]
        lines += [f"| {c.name} | {c.baseline:.4f} | {c.current:.4f} | {c.limit} | {'ok' if c.ok else '**FAIL**'} |"
                  for c in self.checks]
        return "\n".join(lines) + "\n"


def compare(current: pd.DataFrame, baseline: pd.DataFrame, budget: float = 0.99, savings_tolerance: float = 0.02,
            area_tolerance: float = 0.02) -> CheckReport:
    chosen = pick(baseline, budget)
    if chosen is None:
        raise MueBenchError(f"the baseline has no point with quality_rel ≥ {budget:g}; nothing to check against")
    rows = current[(current["point_id"] == chosen.point_id) & (current["status"] == "ok")]
    if rows.empty:
        raise MueBenchError(f"the current results have no successful point {chosen.point_id} "
                            "(run the baseline's spec)")
    now = rows.iloc[0]
    area_base, area_now = dominated_area(baseline), dominated_area(current)
    checks = [
        Check("quality_rel", chosen.quality_rel, now.quality_rel, f">= {budget:g}",
              bool(now.quality_rel >= budget - 1e-12)),
        Check("layer_savings", chosen.layer_savings, now.layer_savings, f">= baseline - {savings_tolerance:g}",
              bool(now.layer_savings >= chosen.layer_savings - savings_tolerance)),
        Check("flop_savings", chosen.flop_savings, now.flop_savings, f">= baseline - {savings_tolerance:g}",
              bool(now.flop_savings >= chosen.flop_savings - savings_tolerance)),
        Check("front dominated area", area_base, area_now, f">= baseline x (1 - {area_tolerance:g})",
              bool(area_now >= area_base * (1 - area_tolerance))),
    ]
    return CheckReport(chosen.point_id, checks)


def check_files(current: Path, baseline: Path, budget: float = 0.99, savings_tolerance: float = 0.02,
                area_tolerance: float = 0.02, report: Path | None = None) -> CheckReport:
    """`compare` on two results files; with `report`, the markdown is also appended there."""
    check_budget(budget)
    if report is not None and not report.parent.is_dir():
        raise SpecError(f"--report {report}: folder {report.parent} does not exist")
    if report is not None and report.is_dir():
        raise SpecError(f"--report {report} is a folder; give a file to append the report to")
    tables = [checked_points(read_table(p), p, CHECK_COLUMNS) for p in (current, baseline)]
    result = compare(*tables, budget, savings_tolerance, area_tolerance)
    if report is not None:
        try:
            with open(report, "a") as f:
                f.write(result.markdown())
        except OSError as e:
            raise MueBenchError(f"--report {report}: cannot append the report ({e.strerror or e})") from None
    return result
