"""`mue-bench plot`: the figures of one or more sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import handled


def plot(
    results: Annotated[list[Path], typer.Argument(help="Results file(s); several share one trade-off figure.")],
    saving: Annotated[str, typer.Option("--saving", help="Savings axis: layer, flop or time.")] = "layer",
    y: Annotated[str, typer.Option(help="quality_rel or quality.")] = "quality_rel",
    budget: Annotated[float, typer.Option(help="Quality budget line and picked point.")] = 0.99,
    out: Annotated[Path, typer.Option(help="Directory for the PNG and SVG files.")] = Path("plots"),
) -> None:
    """Draw the Pareto front, heatmaps, exit histograms and realization scatter (PNG and SVG)."""
    from mue_bench.analysis.plot import plot_files

    with handled():
        paths = plot_files(results, out, saving, y, budget)
    for p in paths:
        render.line(f"wrote {p}")
