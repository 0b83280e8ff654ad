"""The `mue-bench` command line: one module per command, each parsing its options, calling one library
function and rendering the result (render.py). Errors become one line and an exit code (options.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from mue_bench.cli import calibrate, check, convert, evaluate, pick, plot, sweep, train
from mue_bench.cli.options import OneLineUsage

# Plain help (no rich markup): "[model]" in a help text stays text, and flags show no "<bool>" type.
app = typer.Typer(cls=OneLineUsage, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Sweep, measure and pick MuE early-exit thresholds for encoder-decoder VLMs.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mue-bench {version('mue-bench')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Sweep, measure and pick MuE early-exit thresholds for encoder-decoder VLMs."""


app.command(short_help="Run a spec's threshold grid; write results/<name>.parquet.")(sweep.sweep)
app.command("eval", short_help="One threshold triple against the full model, on the shapes benchmark.")(
    evaluate.evaluate)
app.command(short_help="Train or fine-tune with the MuE layer-wise loss, from a recipe.")(train.train)
app.command(short_help="Draw the trade-off front, heatmaps, exit histograms, realization.")(plot.plot)
app.command("calibrate-grid", short_help="Propose τ grids from the full model's similarities.")(
    calibrate.calibrate_grid)
app.command("pick", short_help="Pick thresholds within a quality budget, or with risk control.")(pick.pick)
app.command(short_help="CI gate: fail if quality or savings regressed against a baseline.")(check.check)
app.command(short_help="Convert an OFA checkpoint (fairseq .pt or ModelScope folder) to safetensors.")(
    convert.convert)

def main() -> None:  # pragma: no cover
    app()
