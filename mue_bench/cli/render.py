"""Everything the commands draw: tables, progress and JSON. Only presentation; no decisions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mue_bench.analysis.pick import pick
from mue_bench.mue.config import format_tau

# Tables stay readable when output goes to a pipe or a CI log, where rich would assume 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def pct(x: object) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * float(x):.1f}%"


def num(x: object, digits: int = 3) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def jsonable(v: object) -> object:
    """Plain JSON values: NaN becomes null, numpy scalars and arrays plain numbers and lists."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return jsonable(v.tolist())
    if isinstance(v, float) and pd.isna(v):
        return None
    return v


def print_json(data: object) -> None:
    console.print_json(json.dumps(jsonable(data)))


def line(text: str) -> None:
    console.print(text, highlight=False, markup=False)


def pct_ci(x: object, lo: object, hi: object) -> str:
    """A percentage with its interval, "44.8% [40.1, 49.0]"; the bare value where there is no interval."""
    if x is None or pd.isna(x) or lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return pct(x)
    return f"{100 * float(x):.1f}% [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def _table(title: str, columns: list[str], left: set[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def summary_table(points: pd.DataFrame, title: str) -> Table:
    """The full model, and the largest layer savings within 1% and 5% quality loss."""
    metric = points["quality_metric"].iloc[0]
    table = _table(title, ["", "τ_img", "τ_txt", "τ_dec", metric, "quality_rel", "layer sav.", "FLOP sav.",
                           "time sav. [95% CI]", "consistency"], {""})
    ok = points[points["status"] == "ok"]
    rows = [("full model", ok[ok["is_full"]].iloc[0] if ok["is_full"].any() else None)]
    rows += [(f"best ≥{int(b * 100)}% quality", pick(ok, b)) for b in (0.99, 0.95)]
    for label, r in rows:
        if r is None:
            table.add_row(label, *["–"] * 9)
            continue
        table.add_row(label, format_tau(r.tau_img), format_tau(r.tau_txt), format_tau(r.tau_dec), num(r.quality),
                      pct(r.quality_rel), pct(r.layer_savings), pct(r.flop_savings),
                      pct_ci(r.time_savings, r.time_savings_lo, r.time_savings_hi), pct(r.consistency))
    return table


def sweep_summary(outcome, spec) -> None:
    pts = outcome.points
    if (pts["status"] == "ok").any():
        console.print(summary_table(pts, f"{spec.name}: {len(pts)} points x {int(pts['n'].max())} samples "
                                         f"({len(outcome.computed)} computed, {len(outcome.reused)} reused)"))
    warnings = pts["timing_warning"].dropna().unique()
    if len(warnings):
        err_console.print(f"[yellow]warning:[/yellow] {warnings[0]}", highlight=False)
    if outcome.wall_s and outcome.workers > 1:
        line(f"timing the full model beside each point took {outcome.reference_s:.1f} s of {outcome.workers} "
             f"workers' time; this run took {outcome.wall_s:.1f} s")
    elif outcome.wall_s:
        line(f"timing the full model beside each point took {outcome.reference_s:.1f} s of this run's "
             f"{outcome.wall_s:.1f} s ({outcome.reference_s / outcome.wall_s:.0%})")
    line(f"wrote {spec.results_path()} and {spec.samples_path()}")
    if outcome.failed:
        err_console.print(f"[red]{len(outcome.failed)} point(s) failed:[/red] " + ", ".join(outcome.failed))


def _point_json(r: pd.Series) -> dict:
    keys = ["point_id", "is_full", "tau_img", "tau_txt", "tau_dec", "encoder_mode", "kv_fill", "dec_schedule",
            "quality", "quality_rel", "layer_savings", "flop_savings", "time_savings", "time_savings_lo",
            "time_savings_hi", "consistency"]
    return {k: r[k] for k in keys}


def sweep_json(outcome, spec) -> None:
    """The summary as data: which points ran, the full model, the best points within 1% and 5% quality loss."""
    pts = outcome.points
    ok = pts[pts["status"] == "ok"]
    full = ok[ok["is_full"]]
    best = {f"{b:g}": (None if (r := pick(ok, b)) is None else _point_json(r)) for b in (0.99, 0.95)}
    warnings = pts["timing_warning"].dropna().unique()
    print_json({"spec": spec.name, "results": str(spec.results_path()), "samples": str(spec.samples_path()),
                "points": len(pts), "n": int(pts["n"].max()) if len(ok) else 0,
                "computed": outcome.computed, "reused": outcome.reused, "failed": outcome.failed,
                "full": _point_json(full.iloc[0]) if len(full) else None, "best": best,
                "wall_s": outcome.wall_s, "reference_s": outcome.reference_s, "workers": outcome.workers,
                "timing_warning": warnings[0] if len(warnings) else None})


def grid_json(spec) -> None:
    """The dry-run grid as data."""
    points = [{"point_id": p.point_id, "is_full": p.is_full, "tau_img": p.tau_img, "tau_txt": p.tau_txt,
               "tau_dec": p.tau_dec, "encoder_mode": p.encoder_mode, "kv_fill": p.kv_fill,
               "dec_schedule": p.dec_schedule, "fixed_exit": list(p.fixed_exit) if p.fixed_exit else None}
              for p in spec.points()]
    print_json({"spec": spec.name, "results": str(spec.results_path()), "samples": spec.data.limit,
                "n_points": len(points), "points": points})


def eval_json(points: pd.DataFrame) -> None:
    print_json({"points": [_point_json(r) | {"n": r["n"], "enc_img_layers": r["enc_img_layers"],
                                             "enc_txt_layers": r["enc_txt_layers"], "dec_layers": r["dec_layers"]}
                           for _, r in points.iterrows()]})


def grid_listing(spec) -> None:
    points = spec.points()
    for p in points:
        line(p.point_id)
    line(f"{len(points)} grid points (full model included) x {spec.data.limit or 'all'} samples -> "
         f"{spec.results_path()}")


def eval_table(points: pd.DataFrame, title: str) -> None:
    pts = points.set_index("point_id")
    table = _table(f"{title} (n={int(pts['n'].iloc[0])})", ["", pts["quality_metric"].iloc[0], "quality_rel",
                   "img layers", "txt layers", "dec layers", "layer sav.", "FLOP sav.", "time sav. [95% CI]",
                   "consistency"],
                   {""})
    for pid, r in pts.iterrows():
        table.add_row("full model" if r.is_full else pid, num(r.quality), pct(r.quality_rel),
                      num(r.enc_img_layers, 2), num(r.enc_txt_layers, 2), num(r.dec_layers, 2),
                      pct(r.layer_savings), pct(r.flop_savings),
                      pct_ci(r.time_savings, r.time_savings_lo, r.time_savings_hi), pct(r.consistency))
    console.print(table)


def budget_table(bp) -> None:
    table = _table(f"candidates with quality_rel ≥ {bp.budget:g}, by {bp.objective}",
                   ["point", "quality_rel [95% CI]", "layer sav. [95% CI]", "FLOP sav. [95% CI]",
                    "time sav. [95% CI]"],
                   {"point"})
    for r in bp.top.itertuples():
        table.add_row(r.point_id, f"{pct(r.quality_rel)} [{pct(r.quality_rel_lo)}, {pct(r.quality_rel_hi)}]",
                      f"{pct(r.layer_savings)} [{pct(r.layer_savings_lo)}, {pct(r.layer_savings_hi)}]",
                      f"{pct(r.flop_savings)} [{pct(r.flop_savings_lo)}, {pct(r.flop_savings_hi)}]",
                      pct_ci(r.time_savings, r.time_savings_lo, r.time_savings_hi))
    console.print(table)
    if bp.chosen is not None:
        line(f"picked {bp.chosen.point_id}")
    else:
        err_console.print(f"no point keeps quality_rel ≥ {bp.budget:g}", highlight=False)


def risk_table(rp) -> None:
    table = rp.path_table()
    cols = ["point_id", "n", "risk_hat", "p_value", "accepted"]
    cols += ["realised_risk"] if "realised_risk" in table else []
    t = _table(f"Learn then Test on {rp.calibration} (risk ≤ {rp.delta:g} with probability ≥ {rp.confidence:g})",
               cols, {"point_id"})
    for r in table.itertuples():
        t.add_row(*[str(getattr(r, c)) if c in ("point_id", "n", "accepted") else f"{getattr(r, c):.4g}"
                    for c in cols])
        if not r.accepted:
            break
    console.print(t)
    line(f"picked {rp.result.chosen}" if rp.result.chosen else "no point passes: keep the full model")


class _RichHooks:
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
            point_done=lambda pid, ok, summary=None: self.p.advance(self.points),
            warming_up=lambda: self.p.update(self.batches, description="warm-up (full model, untimed)"),
            scoring=lambda: self.p.update(self.batches, description="scoring (pycocoevalcap)"),
            warn=lambda msg: err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False),
        )


class _LineHooks:
    """Progress for a log or CI, where a bar would print nothing: one line per finished point on stderr."""

    def __init__(self, verbose: bool = False):
        self.total, self.done, self.computed, self.started = 0, 0, 0, time.perf_counter()
        self.verbose = verbose

    def _say(self, text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    def point_done(self, pid: str, ok: bool, summary=None) -> None:
        self.done, self.computed = self.done + 1, self.computed + 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.computed * (self.total - self.done)
        what = "FAILED"
        if ok:
            what = "done" if summary is None else (f"done  n={summary.n}, layer sav. {pct(summary.layer_savings)}, "
                                                   f"FLOP sav. {pct(summary.flop_savings)}")
        self._say(f"[{self.done}/{self.total}] {pid} {what}  elapsed {elapsed:.0f} s, eta {eta:.0f} s")

    def hooks(self):
        from mue_bench.run.runner import Progress as Hooks

        def start_points(total: int, done: int) -> None:
            self.total, self.done = total, done
            self._say(f"{total} grid points, {done} already done")

        start_point = (lambda pid, n: self._say(f"{pid}: {n} batches")) if self.verbose else (lambda pid, n: None)
        return Hooks(start_points=start_points, start_point=start_point, point_done=self.point_done,
                     warming_up=lambda: self._say("warm-up (full model, untimed)"),
                     scoring=lambda: self._say("scoring (pycocoevalcap; quality is known after this)"),
                     warn=lambda msg: self._say(f"warning: {msg}"))


def _quiet_hooks():
    from mue_bench.run.runner import Progress as Hooks

    return Hooks(warn=lambda msg: err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False))


@contextmanager
def progress(verbosity: int = 0) -> Iterator:
    """The runner's progress hooks: a transient bar in a terminal, one line per point in a log (and with
    verbosity 1 everywhere, with a line as each point starts); verbosity -1 prints warnings only."""
    if verbosity < 0:
        yield _quiet_hooks()
        return
    if verbosity > 0 or not err_console.is_terminal:
        yield _LineHooks(verbose=verbosity > 0).hooks()
        return
    bar = Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=True)
    with bar:
        yield _RichHooks(bar).hooks()
