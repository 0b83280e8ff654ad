"""Option types shared by several commands, and the error contract every command runs under."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer vendors its own click from 0.2x on; before, it used the click package
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as _click_errors

from mue_bench.errors import MueBenchError

UsageError = _click_errors.UsageError
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())  # click < 8.2 has none: catch nothing

DEFAULT_SPEC = Path("sweeps/demo.toml")

SpecArg = Annotated[Path, typer.Argument(help="Sweep spec (TOML).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N samples.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 or auto (overrides the spec).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (on stdout; progress stays on stderr).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; warnings and errors only.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Progress as one line per point, also in a "
                                                                  "terminal, with a line as each point starts.")]
SavingOpt = Annotated[str, typer.Option("--saving", help="Which saving: layer, flop or time.")]
BudgetOpt = Annotated[float, typer.Option(help="Least quality_rel to keep: a fraction of the full model's quality "
                                                "in (0, 1], e.g. 0.99.")]


def verbosity(quiet: bool, verbose: bool) -> int:
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other", param_hint="--quiet / --verbose")
    return -1 if quiet else int(verbose)


ResultsArg = Annotated[list[Path], typer.Argument(help="Results file(s) (results/<name>.parquet).")]


def _error_line(message: str) -> None:
    from mue_bench.cli.render import err_console

    # The message is the user's text (a key, a path, a value): never markup, and one line whatever it holds.
    err_console.print(f"[red]error:[/red] {escape(' '.join(message.splitlines()))}", highlight=False,
                      soft_wrap=True)


@contextmanager
def _usage_in_one_line() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # a bare `mue-bench` shows the help, as asked
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "mue-bench"
        _error_line(f"{where}: {e.format_message()} (see '{where} --help')")
        sys.exit(e.exit_code)


class OneLineUsage(TyperGroup):
    """Usage errors (an unknown option, a missing argument, a bad value) follow the error contract: one line
    naming the command, the option and the fix, exit 2, instead of Click's usage block."""

    def make_context(self, *args, **kwargs) -> typer.Context:
        with _usage_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context):
        with _usage_in_one_line():
            return super().invoke(ctx)


@contextmanager
def handled() -> Iterator[None]:
    """Library errors become one red line and their exit code (2 bad input, 1 run-time); Ctrl-C is 130."""
    from mue_bench.cli.render import err_console

    try:
        yield
    except MueBenchError as e:
        _error_line(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted: finished points are saved; rerun the same command to resume")
        raise typer.Exit(130) from None
