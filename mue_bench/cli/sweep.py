"""`mue-bench sweep`: run a spec's grid and print its summary."""

from __future__ import annotations

from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import (
    DEFAULT_SPEC,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    QuietOpt,
    SpecArg,
    VerboseOpt,
    handled,
    verbosity,
)

ExecutorOpt = Annotated[str | None, typer.Option("--executor", help="local or ray (overrides run.executor).")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster: auto or host:port (run.address).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="Ray workers (run.workers).")]


def sweep(
    ctx: typer.Context, spec: SpecArg = DEFAULT_SPEC, limit: LimitOpt = None, device: DeviceOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid and its size, run nothing.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard earlier results of this spec.")] = False,
    continue_on_error: Annotated[bool, typer.Option("--continue-on-error", help="Record a failing point and go on.")]
    = False,
    meteor: Annotated[bool, typer.Option(help="Score METEOR (starts a Java process).")] = True,
    as_json: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
    executor: ExecutorOpt = None, address: AddressOpt = None, workers: WorkersOpt = None,
) -> None:
    """Run a model across a grid of (image, text, decoder) thresholds; write results/<name>.parquet."""
    # ctx.obj may carry run_sweep's `load` and `timer` (tests hand in a fake model; users never set it)
    from mue_bench.spec import load_spec

    with handled():
        s = load_spec(spec).overridden(limit, device, executor=executor, address=address, workers=workers)
        if dry_run:
            return render.grid_json(s) if as_json else render.grid_listing(s)
        from mue_bench.run.runner import SweepOptions, run_sweep  # torch, only once the spec is sound
        with render.progress(verbosity(quiet, verbose)) as hooks:
            options = SweepOptions(fresh=fresh, continue_on_error=continue_on_error, meteor=meteor)
            outcome = run_sweep(s, options, hooks, **(ctx.obj or {}))
    render.sweep_json(outcome, s) if as_json else render.sweep_summary(outcome, s)
    if outcome.failed:
        raise typer.Exit(1)
