"""`mue-bench pick`: thresholds under a quality budget, or with Learn-then-Test risk control."""

from __future__ import annotations

from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import BudgetOpt, JsonOpt, ResultsArg, handled


def pick(
    results: ResultsArg, budget: BudgetOpt = 0.99,
    saving: Annotated[str, typer.Option("--saving", help="Saving to maximise: layer, flop or time (time: by the lower "
                                                         "end of its 95% interval first).")] = "layer",
    top: Annotated[int, typer.Option(min=1, help="Candidates to list.")] = 5,
    risk: Annotated[float | None, typer.Option(
        help="Risk-controlled pick (Learn then Test): bound on mean disagreement with the full model.")] = None,
    confidence: Annotated[float, typer.Option(help="With --risk: probability that the bound holds.")] = 0.95,
    calibration_split: Annotated[str, typer.Option(help="With --risk: split to calibrate on.")] = "val",
    verify: Annotated[str | None, typer.Option(help="With --risk: split to report realised risk on.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pick the thresholds with the largest saving within a quality budget (exit 1 if none qualifies)."""
    from mue_bench.analysis.pick import pick_files

    with handled():
        chosen = pick_files(results, budget, saving, top, risk, confidence, calibration_split, verify)
    if as_json:
        render.print_json(chosen.to_json())
    else:
        render.risk_table(chosen) if risk is not None else render.budget_table(chosen)
    if chosen.chosen_id is None:
        raise typer.Exit(1)
