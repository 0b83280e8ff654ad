"""The `mue-bench` command line: one module per command, each parsing its options, calling one library
function and rendering the result (render.py). Errors become one line and an exit code (options.py)."""

from __future__ import annotations

import typer

from mue_bench.cli import calibrate, check, convert, evaluate, pick, plot, sweep, train

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Sweep, measure and pick MuE early-exit thresholds for encoder-decoder VLMs.")
app.command()(sweep.sweep)
app.command("eval")(evaluate.evaluate)
app.command()(train.train)
app.command()(plot.plot)
app.command("calibrate-grid")(calibrate.calibrate_grid)
app.command("pick")(pick.pick)
app.command()(check.check)
app.command()(convert.convert)


def main() -> None:  # pragma: no cover
    app()
