"""`mue-bench check`: the CI regression gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import JsonOpt, handled


def check(
    current: Annotated[Path, typer.Argument(help="Fresh results file.")],
    baseline: Annotated[Path, typer.Option(help="Committed baseline results file.")],
    budget: Annotated[float, typer.Option(help="Quality budget for the baseline's pick.")] = 0.99,
    savings_tolerance: Annotated[float, typer.Option(help="Allowed absolute loss of savings.")] = 0.02,
    area_tolerance: Annotated[float, typer.Option(help="Allowed relative loss of the front's area.")] = 0.02,
    report: Annotated[Path | None, typer.Option(help="Also append the markdown report to this file "
                                                     "(e.g. $GITHUB_STEP_SUMMARY).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """CI gate: exit 1 if quality or savings regressed against the baseline."""
    from mue_bench.analysis.check import check_files

    with handled():
        result = check_files(current, baseline, budget, savings_tolerance, area_tolerance, report)
    render.print_json(result.to_json()) if as_json else render.line(result.markdown())
    if not result.ok:
        raise typer.Exit(1)
