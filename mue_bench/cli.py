"""The `mue-bench` command line: thin commands that parse, call one library function and render.

Library errors (`MueBenchError`) become one red line and exit code 1 (2 for bad specs and usage),
never a traceback.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mue_bench.analysis.pick import pick
from mue_bench.errors import MueBenchError, SpecError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Sweep, measure and pick MuE early-exit thresholds for encoder-decoder VLMs.")
# Tables stay readable when output goes to a pipe or a CI log, where rich would assume 80 columns.
_WIDTH = None if sys.stdout.isatty() else 150
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
DEFAULT_SPEC = Path("sweeps/demo.toml")

LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N samples.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 or auto (overrides the spec).")]


def _fail(e: MueBenchError) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


def _pct(x: object) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.1f}%"


def _num(x: object, digits: int = 3) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def _tau(x: float) -> str:
    return "off" if x > 1 else f"{x:g}"


def summary_table(points: pd.DataFrame, title: str) -> Table:
    """The full model, and the largest layer savings within 1% and 5% quality loss."""
    metric = points["quality_metric"].iloc[0]
    table = Table(title=title, title_justify="left")
    for col in ("", "τ_img", "τ_txt", "τ_dec", metric, "quality_rel", "layer sav.", "FLOP sav.", "time sav.",
                "consistency"):
        table.add_column(col, justify="left" if not col else "right")
    ok = points[points["status"] == "ok"]
    rows = [("full model", ok[ok["is_full"]].iloc[0] if ok["is_full"].any() else None)]
    rows += [(f"best ≥{int(b * 100)}% quality", pick(ok, b)) for b in (0.99, 0.95)]
    for label, r in rows:
        if r is None:
            table.add_row(label, *["–"] * 9)
            continue
        table.add_row(label, _tau(r.tau_img), _tau(r.tau_txt), _tau(r.tau_dec), _num(r.quality),
                      _pct(r.quality_rel), _pct(r.layer_savings), _pct(r.flop_savings), _pct(r.time_savings),
                      _pct(r.consistency))
    return table


class _RichProgress:
    def __init__(self, progress: Progress):
        self.p = progress
        self.points = progress.add_task("grid points", total=None)
        self.batches = progress.add_task("batches", total=None)

    def hooks(self):
        from mue_bench.run.runner import Progress as Hooks

        return Hooks(
            start_points=lambda total, done: self.p.update(self.points, total=total, completed=done),
            start_point=lambda pid, n: self.p.reset(self.batches, total=n, description=pid),
            batch_done=lambda: self.p.advance(self.batches),
            point_done=lambda pid, ok: self.p.advance(self.points),
            warming_up=lambda: self.p.update(self.batches, description="warm-up (full model, untimed)"),
            scoring=lambda: self.p.update(self.batches, description="scoring (pycocoevalcap)"),
            warn=lambda msg: err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False),
        )


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err_console,
                    transient=True)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML).")] = DEFAULT_SPEC,
    limit: LimitOpt = None,
    device: DeviceOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid and its size, run nothing.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard earlier results of this spec.")] = False,
    continue_on_error: Annotated[bool, typer.Option("--continue-on-error",
                                                    help="Record a failing point and go on.")] = False,
    meteor: Annotated[bool, typer.Option(help="Score METEOR (starts a Java process).")] = True,
) -> None:
    """Run a model across a grid of (image, text, decoder) thresholds; write results/<name>.parquet."""
    from mue_bench.run.runner import SweepOptions, run_sweep
    from mue_bench.spec import load_spec, point_id

    try:
        s = load_spec(spec)
        s = _override(s, limit, device)
        if dry_run:
            points = s.points()
            for p in points:
                console.print(point_id(p), highlight=False)
            console.print(f"{len(points)} grid points (full model included) x "
                          f"{s.data.limit or 'all'} samples -> {s.results_path()}")
            return
        with _progress() as p:
            outcome = run_sweep(s, SweepOptions(fresh=fresh, continue_on_error=continue_on_error, meteor=meteor),
                                _RichProgress(p).hooks())
    except MueBenchError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err_console.print("interrupted: finished points are saved; rerun the same command to resume")
        raise typer.Exit(130) from None
    pts = outcome.points
    console.print(summary_table(pts, f"{s.name}: {len(pts)} points x {int(pts['n'].max())} samples "
                                     f"({len(outcome.computed)} computed, {len(outcome.reused)} reused)"))
    console.print(f"wrote {s.results_path()} and {s.samples_path()}", highlight=False)
    if outcome.failed:
        err_console.print(f"[red]{len(outcome.failed)} point(s) failed:[/red] " + ", ".join(outcome.failed))
        raise typer.Exit(1)


def _override(spec, limit: int | None, device: str | None):
    data = spec.data.model_copy(update={"limit": limit}) if limit else spec.data
    run = spec.run.model_copy(update={"device": device}) if device else spec.run
    return spec.model_copy(update={"data": data, "run": run})


@app.command("eval")
def evaluate(
    task: Annotated[str, typer.Option(help="caption or entailment.")] = "caption",
    img: Annotated[float, typer.Option("--img", help="τ_img (above 1: no exit).")] = 0.99,
    txt: Annotated[float, typer.Option("--txt", help="τ_txt.")] = 0.7,
    dec: Annotated[float, typer.Option("--dec", help="τ_dec.")] = 0.9,
    checkpoint: Annotated[str, typer.Option(help="Built-in name or checkpoint directory.")] = "mue-tiny",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    kv_fill: Annotated[str, typer.Option(help="copy, propagate or official.")] = "copy",
    encoder_mode: Annotated[str, typer.Option(help="freeze (joint encoder, mue-tiny's own) or split.")] = "freeze",
    schedule: Annotated[str, typer.Option(help="Decoder threshold schedule: constant or official.")] = "constant",
    beams: Annotated[int, typer.Option(help="Beam size.")] = 1,
    data_root: Annotated[str | None, typer.Option(
        help="Where the shapes benchmark lives [default: data/shapes-v<version>].")] = None,
    data_version: Annotated[int | None, typer.Option(
        help="shapes generator version (2, 3 or 4) [default: the one the shipped model was trained on].")] = None,
    limit: LimitOpt = None,
    device: DeviceOpt = None,
) -> None:
    """One threshold triple on the shapes benchmark: quality and savings against the full model."""
    from mue_bench.run.runner import SweepOptions, run_sweep
    from mue_bench.spec import SweepSpec

    try:
        with tempfile.TemporaryDirectory() as out:
            s = _validate_spec({
                "name": "eval", "model": {"checkpoint": checkpoint},
                "data": {"task": task, "split": split, "root": data_root, "limit": limit}
                        | ({} if data_version is None else {"version": data_version}),
                "decoding": {"num_beams": beams, "no_repeat_ngram": 3 if task == "caption" else 0},
                "grid": {"tau_img": [img], "tau_txt": [txt], "tau_dec": [dec], "kv_fill": [kv_fill],
                         "encoder_mode": [encoder_mode], "dec_schedule": [schedule]},
                "run": {"device": device or "auto"}, "output": {"dir": out},
            }, SweepSpec)
            with _progress() as p:
                outcome = run_sweep(s, SweepOptions(), _RichProgress(p).hooks())
    except MueBenchError as e:
        raise _fail(e) from None
    pts = outcome.points.set_index("point_id")
    table = Table(title=f"mue-tiny on shapes {task} ({split}, n={int(pts['n'].iloc[0])})", title_justify="left")
    for col in ("", pts["quality_metric"].iloc[0], "quality_rel", "img layers", "txt layers", "dec layers",
                "layer sav.", "FLOP sav.", "time sav.", "consistency"):
        table.add_column(col, justify="right" if col else "left")
    for pid, r in pts.iterrows():
        table.add_row("full model" if r.is_full else pid, _num(r.quality), _pct(r.quality_rel),
                      _num(r.enc_img_layers, 2), _num(r.enc_txt_layers, 2), _num(r.dec_layers, 2),
                      _pct(r.layer_savings), _pct(r.flop_savings), _pct(r.time_savings), _pct(r.consistency))
    console.print(table)


def _validate_spec(raw: dict, model):
    from pydantic import ValidationError

    from mue_bench.spec import describe_validation_error

    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, "options")) from None


@app.command()
def train(
    recipe: Annotated[Path, typer.Option("--recipe", "--config", help="Training recipe (JSON, recipes/).")] = Path(
        "recipes/mue-tiny.json"),
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")] = Path("checkpoints/mue-tiny"),
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of steps of that stage.")] = None,
    stage: Annotated[int | None, typer.Option(min=1, help="Train up to this stage (default: the last) and save "
                                                          "it.")] = None,
    init: Annotated[Path | None, typer.Option(help="Start the stage from this checkpoint (which the stage before "
                                                   "it produced) instead of retraining the earlier stages.")] = None,
) -> None:
    """Train with the MuE layer-wise loss from a recipe: the built-in model (recipes/mue-tiny.json reproduces
    the shipped checkpoint), or fine-tune a transformers model (recipes/finetune-florence2-coco.json)."""
    from mue_bench.training import run_recipe

    try:
        summary = run_recipe(recipe, out, steps=steps, stage=stage, init=init,
                             log=lambda line: console.print(line, highlight=False))
    except MueBenchError as e:
        raise _fail(e) from None
    console.print(f"wrote {out} ({summary['steps']} steps, {summary['wall_time_s']} s)")


@app.command()
def plot(
    results: Annotated[list[Path], typer.Argument(help="Results file(s); several share one trade-off figure.")],
    x: Annotated[str, typer.Option(help="Savings axis: layer, flop or time.")] = "layer",
    y: Annotated[str, typer.Option(help="quality_rel or quality.")] = "quality_rel",
    budget: Annotated[float, typer.Option(help="Quality budget line and picked point.")] = 0.99,
    out: Annotated[Path, typer.Option(help="Directory for the PNG and SVG files.")] = Path("plots"),
) -> None:
    """Draw the Pareto front, heatmaps, exit histograms and realization scatter (PNG and SVG)."""
    from mue_bench.analysis.pick import OBJECTIVES
    from mue_bench.results import load_results

    try:
        if x not in OBJECTIVES:
            raise SpecError(f"--x must be one of {', '.join(OBJECTIVES)} (got {x!r})")
        if y not in ("quality_rel", "quality"):
            raise SpecError(f"--y must be quality_rel or quality (got {y!r})")
        loaded = [load_results(p) for p in results]
        from mue_bench.analysis.plot import all_figures

        paths = all_figures(loaded, out, x, y, budget)
    except MueBenchError as e:
        raise _fail(e) from None
    for p in paths:
        console.print(f"wrote {p}", highlight=False)


@app.command("calibrate-grid")
def calibrate_grid(
    spec: Annotated[Path, typer.Argument(help="Sweep spec whose model, data and decoding to use.")] = DEFAULT_SPEC,
    samples: Annotated[int, typer.Option(min=1, help="Samples to trace.")] = 20,
    percentile: Annotated[list[float] | None, typer.Option(help="Percentiles to use (repeatable).")] = None,
) -> None:
    """Propose τ grids from percentiles of the full model's consecutive-layer similarities."""
    from mue_bench.run.calibrate import propose_grid
    from mue_bench.spec import load_spec

    try:
        proposal = propose_grid(load_spec(spec), samples, percentile)
    except MueBenchError as e:
        raise _fail(e) from None
    console.print(proposal.toml(), markup=False, highlight=False)


@app.command("pick")
def pick_cmd(
    results: Annotated[list[Path], typer.Argument(help="Results file(s) (results/<name>.parquet).")],
    budget: Annotated[float, typer.Option(help="Least quality_rel to keep, e.g. 0.99.")] = 0.99,
    objective: Annotated[str, typer.Option(help="Saving to maximise: layer, flop or time.")] = "layer",
    top: Annotated[int, typer.Option(min=1, help="Candidates to list.")] = 5,
    risk: Annotated[float | None, typer.Option(
        help="Risk-controlled pick (Learn then Test): bound on mean disagreement with the full model.")] = None,
    confidence: Annotated[float, typer.Option(help="With --risk: probability that the bound holds.")] = 0.95,
    calibration_split: Annotated[str, typer.Option(help="With --risk: split to calibrate on.")] = "val",
    verify: Annotated[str | None, typer.Option(help="With --risk: split to report realised risk on.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Pick the thresholds with the largest saving within a quality budget (exit 1 if none qualifies)."""
    import json

    from mue_bench.analysis.pick import budget_pick
    from mue_bench.analysis.risk import risk_pick

    try:
        if risk is not None:
            rp = risk_pick(results, risk, confidence, calibration_split, verify)
            _render_risk(rp, risk, confidence, as_json)
            if rp.result.chosen is None:
                raise typer.Exit(1)
            return
        if len(results) != 1:
            raise SpecError("give one results file (several only with --risk)")
        bp = budget_pick(results[0], budget, objective, top)
    except MueBenchError as e:
        raise _fail(e) from None
    if as_json:
        chosen = None if bp.chosen is None else {k: _jsonable(v) for k, v in bp.chosen.items()
                                                 if k in _PICK_FIELDS or k.endswith(("_lo", "_hi"))}
        console.print_json(json.dumps({"budget": budget, "objective": bp.objective, "chosen": chosen}))
    else:
        table = Table(title=f"candidates with quality_rel ≥ {budget:g}, by {bp.objective}", title_justify="left")
        for col in ("point", "quality_rel [95% CI]", "layer sav. [95% CI]", "FLOP sav. [95% CI]", "time sav."):
            table.add_column(col, justify="left" if col == "point" else "right")
        for r in bp.top.itertuples():
            table.add_row(r.point_id, f"{_pct(r.quality_rel)} [{_pct(r.quality_rel_lo)}, {_pct(r.quality_rel_hi)}]",
                          f"{_pct(r.layer_savings)} [{_pct(r.layer_savings_lo)}, {_pct(r.layer_savings_hi)}]",
                          f"{_pct(r.flop_savings)} [{_pct(r.flop_savings_lo)}, {_pct(r.flop_savings_hi)}]",
                          _pct(r.time_savings))
        console.print(table)
        if bp.chosen is not None:
            console.print(f"picked {bp.chosen.point_id}", highlight=False)
    if bp.chosen is None:
        err_console.print(f"no point keeps quality_rel ≥ {budget:g}")
        raise typer.Exit(1)


_PICK_FIELDS = ("point_id", "tau_img", "tau_txt", "tau_dec", "encoder_mode", "kv_fill", "dec_schedule", "quality",
                "quality_rel", "layer_savings", "flop_savings", "time_savings", "consistency")


def _jsonable(v: object) -> object:
    if isinstance(v, float) and pd.isna(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _render_risk(rp, delta: float, confidence: float, as_json: bool) -> None:
    import json

    table = rp.result.table
    if rp.verification is not None:
        table = table.merge(rp.verification, on="point_id", how="left")
    if as_json:
        console.print_json(json.dumps({"risk": delta, "confidence": confidence, "chosen": rp.result.chosen,
                                       "path": [{k: _jsonable(v) for k, v in r.items()}
                                                for r in table.to_dict("records")]}))
        return
    t = Table(title=f"Learn then Test on {rp.calibration} (risk ≤ {delta:g} with probability ≥ {confidence:g})",
              title_justify="left")
    cols = ["point_id", "n", "risk_hat", "p_value", "accepted"] + (
        ["realised_risk"] if "realised_risk" in table else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "point_id" else "right")
    for r in table.itertuples():
        t.add_row(*[str(getattr(r, c)) if c in ("point_id", "n", "accepted") else f"{getattr(r, c):.4g}"
                    for c in cols])
        if not r.accepted:
            break
    console.print(t)
    console.print(f"picked {rp.result.chosen}" if rp.result.chosen else "no point passes: keep the full model",
                  highlight=False)


@app.command()
def check(
    current: Annotated[Path, typer.Argument(help="Fresh results file.")],
    baseline: Annotated[Path, typer.Option(help="Committed baseline results file.")],
    budget: Annotated[float, typer.Option(help="Quality budget for the baseline's pick.")] = 0.99,
    savings_tolerance: Annotated[float, typer.Option(help="Allowed absolute loss of savings.")] = 0.02,
    area_tolerance: Annotated[float, typer.Option(help="Allowed relative loss of the front's area.")] = 0.02,
    report: Annotated[Path | None, typer.Option(help="Also write the markdown report here "
                                                     "(e.g. $GITHUB_STEP_SUMMARY).")] = None,
) -> None:
    """CI gate: exit 1 if quality or savings regressed against the baseline."""
    from mue_bench.analysis.check import compare
    from mue_bench.results import read_table

    try:
        result = compare(read_table(current), read_table(baseline), budget, savings_tolerance, area_tolerance)
    except MueBenchError as e:
        raise _fail(e) from None
    text = result.markdown()
    console.print(text, markup=False, highlight=False)
    if report is not None:
        with open(report, "a") as f:
            f.write(text)
    if not result.ok:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()
