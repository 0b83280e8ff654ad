"""`mue-bench calibrate-grid`: propose threshold grids from the model's own similarities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import DEFAULT_SPEC, JsonOpt, handled


def calibrate_grid(
    spec: Annotated[Path, typer.Argument(help="Sweep spec whose model, data and decoding to use.")]
    = DEFAULT_SPEC,
    samples: Annotated[int, typer.Option(min=1, help="Samples to trace.")] = 20,
    percentile: Annotated[list[float] | None, typer.Option(help="Percentiles to use (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Propose τ grids from percentiles of the full model's consecutive-layer similarities."""
    from mue_bench.run.calibrate import propose_grid
    from mue_bench.spec import load_spec

    with handled():
        proposal = propose_grid(load_spec(spec), samples, percentile)
    render.print_json(proposal.to_json()) if as_json else render.line(proposal.toml())
