"""Figures of a sweep, as PNG and SVG: the only module that imports matplotlib.

- `tradeoff`: quality vs savings, every point, the Pareto front as a step line, the budget line, the picked
  point, bootstrap error bars; several results files (kv_fill strategies, models, devices) in one figure.
- `heatmaps`: quality_rel and savings over τ_img × τ_txt, one panel per τ_dec.
- `exit_histograms`: layers used per stream at the picked point, from the per-sample file.
- `realization`: time savings vs FLOP savings against the diagonal.
"""

from __future__ import annotations

import errno
import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mue_bench.analysis.bootstrap import bootstrap_intervals  # noqa: E402
from mue_bench.analysis.pareto import pareto_front  # noqa: E402
from mue_bench.analysis.pick import OBJECTIVES, check_budget, pick  # noqa: E402
from mue_bench.errors import MueBenchError, SpecError  # noqa: E402
from mue_bench.results import existing_ancestor, load_results  # noqa: E402

AXIS = {
    "layer": ("layer_savings", "layer savings (% of layer executions skipped)"),
    "flop": ("flop_savings", "FLOP savings (% of analytic FLOPs skipped)"),
    "time": ("time_savings", "wall-clock savings (% of full-model time)"),
}
QUALITY = {"quality_rel": "quality relative to the full model (%)", "quality": None}


def _label(points: pd.DataFrame) -> str:
    r = points.iloc[0]
    fills = "/".join(sorted(points["kv_fill"].dropna().unique()))
    return f"{r.spec_name}: {Path(str(r.checkpoint)).name}, {r.dataset} {r.split}, {fills}, {r.device_name}"


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def tradeoff(results: list[tuple[pd.DataFrame, pd.DataFrame]], out: Path, x: str = "layer", y: str = "quality_rel",
             budget: float = 0.99) -> list[Path]:
    xcol, xlabel = AXIS[x]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (points, samples) in enumerate(results):
        color = colors[i % len(colors)]
        ok = points[points["status"] == "ok"]
        metric = ok["quality_metric"].iloc[0]
        yscale = 100 if y == "quality_rel" or metric == "accuracy" else 1
        ci = bootstrap_intervals(ok, samples, n_boot=300).set_index("point_id")
        ok = ok.join(ci, on="point_id")
        xs, ys = 100 * ok[xcol], yscale * ok[y]
        if y == "quality_rel":
            yerr = yscale * np.abs(np.vstack([ok[y] - ok["quality_rel_lo"], ok["quality_rel_hi"] - ok[y]]))
            xerr = (100 * np.abs(np.vstack([ok[xcol] - ok["time_savings_lo"], ok["time_savings_hi"] - ok[xcol]]))
                    if x == "time" else None)
            ax.errorbar(xs, ys, yerr=np.nan_to_num(yerr), xerr=None if xerr is None else np.nan_to_num(xerr),
                        fmt="none", ecolor=color, alpha=0.25, lw=0.8)
        ax.scatter(xs, ys, s=14, color=color, alpha=0.55, label=f"{_label(ok)} ({len(ok)} points)")
        front = pareto_front(ok, xcol, y)
        ax.step(100 * front[xcol], yscale * front[y], where="pre", color=color, lw=1.6,
                label="Pareto front" if i == 0 else None)
        chosen = pick(ok, budget, xcol) if y == "quality_rel" else None
        if chosen is not None:
            ax.scatter([100 * chosen[xcol]], [yscale * chosen[y]], marker="*", s=220, color=color,
                       edgecolor="black", zorder=5,
                       label=f"picked: {chosen.point_id.split('-split')[0].split('-freeze')[0]}")
    if y == "quality_rel":
        ax.axhline(100 * budget, color="grey", ls="--", lw=1, label=f"budget: {budget:.0%} of full quality")
        ax.set_ylabel(QUALITY[y])
    else:
        ax.set_ylabel(f"{results[0][0]['quality_metric'].iloc[0]} (absolute)")
    ax.set_xlabel(xlabel)
    ax.set_title(f"MuE trade-off: quality vs {x} savings (error bars: 95% bootstrap CI)")
    if x == "time":
        _timing_caveat(fig, results)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    return _save(fig, out, f"tradeoff-{x}-{y}")


def heatmaps(points: pd.DataFrame, out: Path, value: str = "quality_rel") -> list[Path]:
    ok = points[(points["status"] == "ok") & ~points["is_full"] & points["fixed_exit"].isna()]
    decs = sorted(ok["tau_dec"].unique())
    fig, axes = plt.subplots(1, len(decs), figsize=(3.8 * len(decs), 3.4), squeeze=False)
    for ax, dec in zip(axes[0], decs):
        grid = ok[ok["tau_dec"] == dec].pivot_table(index="tau_img", columns="tau_txt", values=value, aggfunc="max")
        im = ax.imshow(100 * grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto",
                       vmin=100 * ok[value].min(), vmax=100 * ok[value].max())
        ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns], fontsize=7)
        ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index], fontsize=7)
        ax.set_xlabel("τ_txt")
        if ax is axes[0][0]:
            ax.set_ylabel("τ_img")
        ax.set_title(f"τ_dec = {dec:g}" if dec <= 1 else "τ_dec off", fontsize=9)
        for (r, c), v in np.ndenumerate(grid.to_numpy()):
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=axes[0].tolist(), label=f"{value} (%)", shrink=0.85)
    fig.suptitle(f"{value} over the threshold grid ({_label(points)})", fontsize=9)
    return _save(fig, out, f"heatmap-{value}")


def exit_histograms(points: pd.DataFrame, samples: pd.DataFrame, out: Path, budget: float = 0.99) -> list[Path]:
    chosen = pick(points, budget)
    pid = chosen.point_id if chosen is not None else points.loc[points["is_full"], "point_id"].iloc[0]
    rows = samples[samples["point_id"] == pid]
    streams = {"image stream (per sample)": rows["enc_img_layers"],
               "text stream (per sample)": rows["enc_txt_layers"],
               "decoder (per generated token)": pd.Series([u for d in rows["dec_layers"] for u in d])}
    n_layers = int(max(s.max() for s in streams.values()))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=False)
    for ax, (name, values) in zip(axes, streams.items()):
        ax.hist(values, bins=np.arange(0.5, n_layers + 1.5), rwidth=0.85, color="#4c72b0")
        ax.set_xlabel("layers used")
        ax.set_ylabel("count")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(1, n_layers + 1))
    fig.suptitle(f"exit layers at {pid}", fontsize=9)
    return _save(fig, out, "exit-histograms")


def _timing_caveat(fig, results: list[tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    """Say under the figure when the sweep's drift alarm went off, instead of drawing numbers as if sound."""
    warnings = {w for points, _ in results for w in points["timing_warning"].dropna()}
    if warnings:
        fig.text(0.5, 0.0, textwrap.fill("timing: " + sorted(warnings)[0], 110), ha="center",
                 va="top", fontsize=7.5, color="firebrick")


def realization(results: list[tuple[pd.DataFrame, pd.DataFrame]], out: Path) -> list[Path]:
    """Time savings against FLOP savings, with the time savings' 95% intervals over pairs."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    lo, hi = 0.0, 1.0
    for points, _ in results:
        ok = points[(points["status"] == "ok") & ~points["is_full"]].dropna(subset=["flop_savings", "time_savings"])
        if ok.empty:
            continue
        err = 100 * np.abs(np.vstack([ok["time_savings"] - ok["time_savings_lo"],
                                      ok["time_savings_hi"] - ok["time_savings"]]))
        ax.errorbar(100 * ok["flop_savings"], 100 * ok["time_savings"], yerr=np.nan_to_num(err), fmt="o", ms=3.5,
                    alpha=0.7, lw=0.8, label=_label(ok))
        values = pd.concat([ok["flop_savings"], ok["time_savings_lo"], ok["time_savings_hi"], ok["time_savings"]])
        lo, hi = min(lo, 100 * values.min()), max(hi, 100 * values.max())
    ax.plot([0, hi], [0, hi], color="grey", ls="--", lw=1, label="realization 1: the clock shows every skipped FLOP")
    ax.axhline(0, color="black", lw=0.6)
    ax.axhspan(lo - 5, 0, color="firebrick", alpha=0.06,
               label="below 0: slower than the full model (exit overhead, or noise)")
    ax.fill_between([0, hi], [0, hi], [hi, hi], color="seagreen", alpha=0.06,
                    label="above the diagonal: more time than FLOPs saved\n(skipped layers' fixed per-layer overhead)")
    ax.set_xlim(min(0, lo) - 2, hi + 2)
    ax.set_ylim(lo - 5, hi + 5)
    ax.set_xlabel("FLOP savings (%)")
    ax.set_ylabel("wall-clock savings (%), 95% interval over pairs")
    ax.set_title("realization: does the clock show the skipped FLOPs?", fontsize=9)
    _timing_caveat(fig, results)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, out, "realization")


def all_figures(results: list[tuple[pd.DataFrame, pd.DataFrame]], out: Path, x: str = "layer",
                y: str = "quality_rel", budget: float = 0.99) -> list[Path]:
    paths = tradeoff(results, out, x, y, budget) + realization(results, out)
    points, samples = results[0]
    if len(points["tau_dec"].unique()) and (~points["is_full"]).any():
        paths += heatmaps(points, out) + heatmaps(points, out, "layer_savings")
    return paths + exit_histograms(points, samples, out, budget)


def plot_files(results: list[Path], out: Path, x: str = "layer", y: str = "quality_rel",
               budget: float = 0.99) -> list[Path]:
    """Every figure of the results files (the trade-off figure overlays them all); the paths written. The
    figures are drawn into a scratch folder beside `out` and moved in together, so a failure leaves none."""
    if x not in OBJECTIVES:
        raise SpecError(f"--x must be one of {', '.join(OBJECTIVES)} (got {x!r})")
    if y not in ("quality_rel", "quality"):
        raise SpecError(f"--y must be quality_rel or quality (got {y!r})")
    check_budget(budget)
    loaded = [load_results(p) for p in results]
    base = existing_ancestor(out)
    if not base.is_dir():
        raise SpecError(f"--out {out}: {base} is a file; give a folder")
    try:
        with tempfile.TemporaryDirectory(prefix=".plots-", dir=base) as scratch:
            drawn = all_figures(loaded, Path(scratch), x, y, budget)
            out.mkdir(parents=True, exist_ok=True)
            for p in drawn:
                os.replace(p, out / p.name)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise MueBenchError(f"no space left on device writing the figures to {out}; free space or choose "
                                "another --out") from None
        if isinstance(e, PermissionError):
            raise SpecError(f"--out {out}: not writable ({e.strerror}); give a folder you can write to") from None
        raise
    return [out / p.name for p in drawn]
