"""Figures of a sweep, as PNG and SVG: the only module that imports matplotlib.

- `tradeoff`: quality vs savings, every point, the Pareto front as a step line from the axes with its points
  labelled by their thresholds, the budget line, the picked point (named in words), bootstrap error bars;
  several results files (kv_fill strategies, models, devices) in one figure. In the SVG every point carries
  its thresholds and numbers as a hover `<title>`, so labels need not crowd the picture.
- `heatmaps`: quality and savings over τ_img × τ_txt, one panel per τ_dec, the picked cell boxed.
- `exit_histograms`: layers used per stream at the picked point beside the full model, from the per-sample file.
- `realization`: time savings vs FLOP savings against the diagonal.

Thresholds are written as `format_tau` writes them ("off" above 1), the same spelling as point ids.
"""

from __future__ import annotations

import errno
import html
import os
import tempfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize, to_rgb  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from mue_bench.analysis.bootstrap import bootstrap_intervals  # noqa: E402
from mue_bench.analysis.pareto import pareto_front  # noqa: E402
from mue_bench.analysis.pick import OBJECTIVES, check_budget, pick  # noqa: E402
from mue_bench.errors import MueBenchError, SpecError  # noqa: E402
from mue_bench.mue.config import ExitConfig, format_tau  # noqa: E402
from mue_bench.results import (  # noqa: E402
    POINTS_SCHEMA,
    checked_points,
    checked_samples,
    existing_ancestor,
    read_table,
    samples_path_for,
)

AXIS = {
    "layer": ("layer_savings", "layer savings (% of layer executions skipped)"),
    "flop": ("flop_savings", "FLOP savings (% of analytic FLOPs skipped)"),
    "time": ("time_savings", "wall-clock savings (% of full-model time)"),
}
QUALITY = {"quality_rel": "quality relative to the full model (%)", "quality": None}
SAVING_WORDS = {"layer_savings": "layer savings", "flop_savings": "FLOP savings", "time_savings": "wall-clock savings"}
VALUE_WORDS = {"quality_rel": "quality relative to the full model (%)", "layer_savings": "layer savings (%)",
               "flop_savings": "FLOP savings (%)", "time_savings": "wall-clock savings (%)"}
TAUS = ("tau_img", "tau_txt", "tau_dec")
MARKERS = "osD^v<>P"
# What the figures read of a results file; older files (the committed CI baseline) lack later columns, which are
# drawn as unknown rather than refused.
PLOT_COLUMNS = ["point_id", "status", "is_full", *TAUS, "encoder_mode", "quality_metric", "quality", "quality_rel",
                "layer_savings", "flop_savings", "time_savings", "task"]


def load_for_plot(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points and per-sample rows of one sweep, with the columns a figure needs (see PLOT_COLUMNS)."""
    points = checked_points(read_table(path), path, PLOT_COLUMNS)
    missing = [c for c in POINTS_SCHEMA.names if c not in points]
    points = points.reindex(columns=list(points.columns) + missing)
    if "reference_id" in missing:
        points["reference_id"] = [ExitConfig(encoder_mode=m).reference_id for m in points["encoder_mode"]]
    samples = samples_path_for(path)
    return points, checked_samples(read_table(samples), samples, points)


def thresholds_in_words(row: pd.Series) -> str:
    """"τ_img 0.99, τ_txt off, τ_dec 0.9", or what a full-model or fixed-exit point is."""
    if bool(row["is_full"]):
        return "the full model (nothing exits)"
    fixed = row.get("fixed_exit")
    if fixed is not None and not (np.isscalar(fixed) and pd.isna(fixed)):
        return "fixed exits after {}/{}/{} layers (image/text/decoder)".format(*fixed)
    return ", ".join(f"{t.replace('tau', 'τ')} {format_tau(row[t])}" for t in TAUS)


def _short_taus(row: pd.Series) -> str:
    """"(0.99, off, 0.9)": the label of a point on the front (the legend says which τ is which)."""
    if bool(row["is_full"]):
        return "full model"
    fixed = row.get("fixed_exit")
    if fixed is not None and not (np.isscalar(fixed) and pd.isna(fixed)):
        return "fixed {}/{}/{}".format(*fixed)
    return "(" + ", ".join(format_tau(row[t]) for t in TAUS) + ")"


def picked_in_words(row: pd.Series, objective: str = "layer_savings") -> str:
    """"picked: τ_img 0.99, τ_txt off, τ_dec 0.9 — 61.9% layer savings at 99.4% quality"."""
    return f"picked: {thresholds_in_words(row)} — {_gain_in_words(row, objective)}"


def _gain_in_words(row: pd.Series, objective: str) -> str:
    return f"{100 * row[objective]:.1f}% {SAVING_WORDS[objective]} at {100 * row['quality_rel']:.1f}% quality"


def text_color(rgba) -> str:
    """Black or white, whichever reads on a cell of this colour (WCAG relative luminance)."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(rgba)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.179 else "white"


def _label(points: pd.DataFrame) -> str:
    r = points.iloc[0]
    fills = "/".join(sorted(points["kv_fill"].dropna().unique()))
    return f"{r.spec_name}: {Path(str(r.checkpoint)).name}, {r.dataset} {r.split}, {fills}, {r.device_name}"


def _save(fig, out: Path, stem: str, titles: dict[str, str] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    if titles:
        _add_svg_titles(paths[1], titles)
    return paths


def _add_svg_titles(svg: Path, titles: dict[str, str]) -> None:
    """A `<title>` (the hover text of SVG viewers and browsers) as first child of each group matplotlib wrote
    for an artist whose gid is a key of `titles`."""
    text = svg.read_text()
    for gid, title in titles.items():
        tag = f'<g id="{gid}">'
        text = text.replace(tag, f"{tag}\n    <title>{html.escape(title)}</title>", 1)
    svg.write_text(text)


def _intervals(ok: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    ci = bootstrap_intervals(ok, samples, n_boot=300) if len(ok) else pd.DataFrame()
    if ci.empty:
        return pd.DataFrame(columns=["quality_rel_lo", "quality_rel_hi"], index=pd.Index([], name="point_id"))
    return ci.set_index("point_id")


def _hover(row: pd.Series, xcol: str, y: str, yscale: float) -> str:
    quality = (f"{100 * row['quality_rel']:.1f}% quality" if y == "quality_rel"
               else f"{row['quality_metric']} {yscale * row['quality']:.3g}")
    ci = ""
    if y == "quality_rel" and pd.notna(row.get("quality_rel_lo")):
        ci = f" (95% CI {100 * row['quality_rel_lo']:.1f}–{100 * row['quality_rel_hi']:.1f}%)"
    return f"{thresholds_in_words(row)}: {100 * row[xcol]:.1f}% {SAVING_WORDS[xcol]}, {quality}{ci} [{row['point_id']}]"


# Where a front label may go, in points from its point, nearest first; the far ones get a leader line.
_OFFSETS = [(6, 5), (6, -5), (-6, 5), (-6, -5), (0, 9), (0, -9), (9, 0), (-9, 0),
            (14, 16), (14, -16), (-14, 16), (-14, -16), (0, 22), (0, -22), (26, 0), (-26, 0)]


def _label_box(label: dict) -> dict:
    """A light box under a label so that lines it crosses do not cut it; the picked point's is outlined."""
    return dict(boxstyle="round,pad=0.15", fc="white", alpha=0.8,
                ec=label["color"] if label.get("picked") else "none", lw=0.8)


def _place_labels(ax, labels: list[dict], markers: list[tuple[float, float]]) -> None:
    """Greedy placement: each label (most important first) takes the nearest offset where it overlaps no
    point and no label already placed and stays inside the axes; one that finds none is left out (its point
    still carries its thresholds in the SVG's hover title), unless it must be shown."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 4 * fig.dpi / 72
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad)
             for px, py in ax.transData.transform(np.asarray(markers, float).reshape(-1, 2))]
    for label in labels:
        first = None
        for dx, dy in _OFFSETS:
            far = abs(dx) + abs(dy) > 20
            ann = ax.annotate(
                label["text"], (label["x"], label["y"]), xytext=(dx, dy), textcoords="offset points",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center", fontsize=label.get("size", 7),
                color=label["color"], bbox=_label_box(label), zorder=6,
                arrowprops=dict(arrowstyle="-", color=label["color"], lw=0.5, alpha=0.6) if far else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer).padded(2)  # the text and its box, not its leader line
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                break
            if first is None and inside:
                first = (dx, dy)
            ann.remove()
        else:
            if label.get("force"):
                dx, dy = first or _OFFSETS[0]
                ann = ax.annotate(label["text"], (label["x"], label["y"]), xytext=(dx, dy),
                                  textcoords="offset points", ha="left" if dx >= 0 else "right",
                                  va="bottom" if dy >= 0 else "top", fontsize=label.get("size", 7),
                                  color=label["color"], bbox=_label_box(label), zorder=6)
                ann.update_positions(renderer)
                taken.append(Text.get_window_extent(ann, renderer))


def _front_line(ax, front_xy: list[tuple[float, float]], color) -> None:
    """The boundary of the region the front dominates, as `dominated_area` measures it: from the left axis
    along the first point's quality, down and along each next point, and down to the bottom axis after the
    last (so a front of one point is drawn too)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    xs, ys = [x0], [front_xy[0][1]]
    for (px, py), (_, next_y) in zip(front_xy, front_xy[1:] + [(None, y0)]):
        xs += [px, px]
        ys += [py, next_y]
    ax.plot(xs, ys, color=color, lw=1.6, zorder=3)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _widen(ax, x_span: float, y_span: float) -> None:
    """At least this much of each axis (in %), so that a file of one point or of equal points is not drawn on a
    scale of hundredths of a percent."""
    for get, set_, span in ((ax.get_xlim, ax.set_xlim, x_span), (ax.get_ylim, ax.set_ylim, y_span)):
        lo, hi = get()
        if hi - lo < span:
            mid = (lo + hi) / 2
            set_(mid - span / 2, mid + span / 2)


def tradeoff(results: list[tuple[pd.DataFrame, pd.DataFrame]], out: Path, x: str = "layer", y: str = "quality_rel",
             budget: float = 0.99) -> list[Path]:
    xcol, xlabel = AXIS[x]
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    titles: dict[str, str] = {}
    fronts, labels, markers, legend = [], [], [], []
    for i, (points, samples) in enumerate(results):
        color, marker = colors[i % len(colors)], MARKERS[i % len(MARKERS)]
        ok = points[points["status"] == "ok"].dropna(subset=[xcol, y])
        if ok.empty:
            continue
        metric = ok["quality_metric"].iloc[0]
        yscale = 100 if y == "quality_rel" or metric == "accuracy" else 1
        ok = ok.join(_intervals(ok, samples), on="point_id")
        xs, ys = 100 * ok[xcol], yscale * ok[y]
        if y == "quality_rel":
            yerr = yscale * np.abs(np.vstack([ok[y] - ok["quality_rel_lo"], ok["quality_rel_hi"] - ok[y]]))
            xerr = (100 * np.abs(np.vstack([ok[xcol] - ok["time_savings_lo"], ok["time_savings_hi"] - ok[xcol]]))
                    if x == "time" else None)
            ax.errorbar(xs, ys, yerr=np.nan_to_num(yerr), xerr=None if xerr is None else np.nan_to_num(xerr),
                        fmt="none", ecolor=color, alpha=0.25, lw=0.8)
        for j, ((_, row), px, py) in enumerate(zip(ok.iterrows(), xs, ys)):
            dot = ax.scatter([px], [py], s=16, color=color, marker=marker, alpha=0.6, zorder=4)
            dot.set_gid(f"mue-point-{i}-{j}")
            titles[dot.get_gid()] = _hover(row, xcol, y, yscale)
            markers.append((px, py))
        legend.append(plt.Line2D([], [], ls="none", marker=marker, color=color, alpha=0.6,
                                 label=f"{_label(ok)} ({len(ok)} point{'s' if len(ok) > 1 else ''})"))
        # Points at the same place hide each other: say how many stand there.
        same = ok.groupby([xs.round(6), ys.round(6)]).size()
        for (px, py), k in same[same > 1].items():
            ax.annotate(f"×{k}", (px, py), xytext=(-4, -4), textcoords="offset points", ha="right", va="top",
                        fontsize=6.5, color=color, zorder=6)
        front = pareto_front(ok, xcol, y)
        ax.scatter(100 * front[xcol], yscale * front[y], s=60, facecolor="none", edgecolor=color, lw=1.1, zorder=4)
        fronts.append(([(100 * a, yscale * b) for a, b in zip(front[xcol], front[y])], color))
        chosen = pick(ok, budget, xcol)
        if chosen is not None:
            cx, cy = 100 * chosen[xcol], yscale * chosen[y]
            ax.scatter([cx], [cy], marker="*", s=240, color=color, edgecolor="black", zorder=5)
            legend.append(plt.Line2D([], [], ls="none", marker="*", ms=13, color=color, markeredgecolor="black",
                                     label=picked_in_words(chosen, xcol)))
            labels.append(dict(x=cx, y=cy, text=_short_taus(chosen), color=color, size=7.5, picked=True,
                               force=True))
        for (_, row), fx, fy in zip(front.iterrows(), 100 * front[xcol], yscale * front[y]):
            if chosen is not None and row["point_id"] == chosen["point_id"]:
                continue
            k = int(same.get((round(fx, 6), round(fy, 6)), 1))
            labels.append(dict(x=fx, y=fy, text=_short_taus(row) + (f" ×{k}" if k > 1 else ""), color=color))
    if fronts:
        taus = np.concatenate([p.loc[p["status"] == "ok", list(TAUS)].to_numpy(float).ravel() for p, _ in results])
        key = "; \"off\": that stream never exits" + ("; -1: it exits after one layer" if (taus < 0).any() else "")
        legend.append(plt.Line2D([], [], color=fronts[0][1], lw=1.6, marker="o", mfc="none", ms=7,
                                 label=f"Pareto front, its points labelled (τ_img, τ_txt, τ_dec){key}"))
    if y == "quality_rel":
        ax.axhline(100 * budget, color="grey", ls="--", lw=1)
        legend.append(plt.Line2D([], [], color="grey", ls="--", lw=1, label=f"budget: {budget:.0%} of full quality"))
        ax.set_ylabel(QUALITY[y])
    else:
        ax.set_ylabel(f"{results[0][0]['quality_metric'].iloc[0]} (absolute)")
    ax.set_xlabel(xlabel)
    ax.set_title(f"MuE trade-off: quality vs {SAVING_WORDS[xcol]} (error bars: 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    _widen(ax, x_span=10, y_span=4 if y == "quality_rel" else 0)
    warning = _timing_warning(results) if x == "time" else None
    if warning:
        legend.append(plt.Line2D([], [], ls="none", label=textwrap.fill("timing: " + warning, 110)))
    shown = fig.legend(handles=legend, loc="outside lower center", fontsize=7.5, ncols=1, frameon=False)
    if warning:
        shown.get_texts()[-1].set_color("firebrick")
    fig.canvas.draw()  # settle the layout, so that limits and label extents are final
    for front_xy, color in fronts:
        _front_line(ax, front_xy, color)
    _place_labels(ax, labels, markers)
    return _save(fig, out, f"tradeoff-{x}-{y}", titles)


def _grid_points(points: pd.DataFrame) -> pd.DataFrame:
    """The points a threshold grid shows: similarity-exit points, or the full model alone when there are none."""
    ok = points[points["status"] == "ok"]
    fixed = ok["fixed_exit"].map(lambda f: f is not None and not (np.isscalar(f) and pd.isna(f)))
    grid = ok[~ok["is_full"].astype(bool) & ~fixed]
    return grid if len(grid) else ok[ok["is_full"].astype(bool)]


def heatmaps(points: pd.DataFrame, out: Path, value: str = "quality_rel", budget: float = 0.99,
             objective: str = "layer_savings") -> list[Path]:
    grid_points = _grid_points(points).dropna(subset=[value])
    if grid_points.empty:
        return []
    imgs, txts, decs = (sorted(grid_points[t].unique()) for t in TAUS)
    chosen = pick(points, budget, objective)
    panel_w, panel_h = 0.9 + 0.62 * len(txts), 1.3 + 0.42 * len(imgs)
    width = min(18.0, max(7.0, 1.6 + panel_w * len(decs)))
    fig, axes = plt.subplots(1, len(decs), figsize=(width, max(3.6, panel_h + 0.9)),
                             squeeze=False, sharey=True, layout="constrained")
    norm = Normalize(100 * grid_points[value].min(), 100 * grid_points[value].max())
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
    rotate = len(txts) > 4 or max(len(format_tau(t)) for t in txts) > 5
    several = False
    for ax, dec in zip(axes[0], decs):
        at_dec = grid_points[grid_points["tau_dec"] == dec]
        grid = at_dec.pivot_table(index="tau_img", columns="tau_txt", values=value, aggfunc="max")
        grid = grid.reindex(index=imgs, columns=txts)
        counts = at_dec.groupby(["tau_img", "tau_txt"]).size()
        several |= bool((counts > 1).any())
        im = ax.imshow(100 * grid.to_numpy(float), origin="lower", cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(txts)), [format_tau(t) for t in txts], fontsize=7.5,
                      rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_yticks(range(len(imgs)), [format_tau(t) for t in imgs], fontsize=7.5)
        ax.set_xlabel("τ_txt (text stream)", fontsize=8)
        ax.set_title(f"τ_dec {format_tau(dec)}", fontsize=9)
        for (r, c), v in np.ndenumerate(grid.to_numpy(float)):
            if np.isnan(v):
                ax.text(c, r, "not run", ha="center", va="center", fontsize=6, color="dimgrey")
            else:
                ax.text(c, r, f"{100 * v:.1f}", ha="center", va="center", fontsize=7,
                        color=text_color(cmap(norm(100 * v))))
        if chosen is not None and chosen.point_id in set(at_dec["point_id"]):
            r, c = imgs.index(chosen["tau_img"]), txts.index(chosen["tau_txt"])
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.2, zorder=5))
    axes[0][0].set_ylabel("τ_img (image stream)", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label=VALUE_WORDS.get(value, value), shrink=0.9)
    notes = [_label(points)]
    if grid_points["is_full"].all():
        notes.append("no exit thresholds in this file: the full model alone")
    if chosen is not None:
        notes.append(f"red box: {picked_in_words(chosen, objective)} (budget {budget:.0%})")
    if several:
        notes.append("a cell holding several points (encoder mode, kv fill, schedule) shows the best")
    wrap = int(width * 16)  # characters of 8.5 pt text across the figure
    fig.suptitle("\n".join([f"{VALUE_WORDS.get(value, value).removesuffix(' (%)')} by threshold"]
                           + [textwrap.fill(n, wrap) for n in notes]), fontsize=8.5)
    return _save(fig, out, f"heatmap-{value}")


_STREAMS = (("image stream", "samples", "enc_img_layers"), ("text stream", "samples", "enc_txt_layers"),
            ("decoder", "generated tokens", "dec_layers"))


def _layers(rows: pd.DataFrame, column: str) -> np.ndarray:
    if column == "dec_layers":
        return np.asarray([u for d in rows[column] if d is not None for u in d], int)
    return rows[column].dropna().to_numpy(int)


def exit_histograms(points: pd.DataFrame, samples: pd.DataFrame, out: Path, budget: float = 0.99,
                    objective: str = "layer_savings") -> list[Path]:
    """Layers used per stream at the picked point, beside the full model it is measured against (shares, so
    that decoders generating different numbers of tokens compare)."""
    ok = points[points["status"] == "ok"]
    chosen = pick(ok, budget, objective)
    full_ids = ok.loc[ok["is_full"].astype(bool), "point_id"]
    ref_id = chosen["reference_id"] if chosen is not None and chosen["reference_id"] in set(full_ids) \
        else full_ids.iloc[0]
    shown = [] if chosen is None or bool(chosen["is_full"]) else [(chosen["point_id"], "picked thresholds", "#4c72b0")]
    shown.append((ref_id, "full model", "#b0b0b0"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
    width = 0.8 / len(shown)
    for ax, (stream, unit, column) in zip(axes, _STREAMS):
        values = {pid: _layers(samples[samples["point_id"] == pid], column) for pid, _, _ in shown}
        n_layers = max([1] + [int(v.max()) for v in values.values() if len(v)])
        ks = np.arange(1, n_layers + 1)
        for s, (pid, name, color) in enumerate(shown):
            v = values[pid]
            share = 100 * np.array([(v == k).sum() for k in ks]) / max(len(v), 1)
            ax.bar(ks + (s - (len(shown) - 1) / 2) * width, share, width=width, color=color,
                   edgecolor="black" if name == "full model" else color, lw=0.5, label=name)
        counts = ", ".join(f"{len(values[pid])} {name.removesuffix(' thresholds')}" for pid, name, _ in shown)
        ax.set_title(f"{stream}, per {unit.removesuffix('s')}\n{unit}: {counts}", fontsize=8.5)
        ax.set_xticks(ks)
        ax.set_ylim(0, 105)
        ax.set_xlabel("layers used")
        ax.set_ylabel(f"share of {unit} (%)")
        ax.grid(axis="y", alpha=0.3)
    if chosen is None:
        head = f"Layers used per stream by the full model: no point keeps ≥ {budget:.0%} of full quality"
    elif bool(chosen["is_full"]):
        head = f"Layers used per stream: the pick under a {budget:.0%} budget is the full model (nothing exits)"
    else:
        head = (f"Layers used per stream at the picked thresholds ({thresholds_in_words(chosen)}: "
                f"{_gain_in_words(chosen, objective)}), beside the full model")
    fig.suptitle(f"{head}\n{_label(points)}", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(shown), fontsize=8,
               frameon=False)
    return _save(fig, out, "exit-histograms")


def _timing_warning(results: list[tuple[pd.DataFrame, pd.DataFrame]]) -> str | None:
    warnings = {w for points, _ in results for w in points["timing_warning"].dropna()}
    return sorted(warnings)[0] if warnings else None


def _timing_caveat(fig, results: list[tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    """Say under the figure when the sweep's drift alarm went off, instead of drawing numbers as if sound."""
    warning = _timing_warning(results)
    if warning:
        fig.text(0.5, 0.0, textwrap.fill("timing: " + warning, 110), ha="center",
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
    """Every figure; the heatmaps and exit histograms are of the first results file."""
    xcol = AXIS[x][0]
    paths = tradeoff(results, out, x, y, budget) + realization(results, out)
    points, samples = results[0]
    paths += heatmaps(points, out, "quality_rel", budget, xcol) + heatmaps(points, out, "layer_savings", budget, xcol)
    return paths + exit_histograms(points, samples, out, budget, xcol)


def plot_files(results: list[Path], out: Path, x: str = "layer", y: str = "quality_rel",
               budget: float = 0.99) -> list[Path]:
    """Every figure of the results files (the trade-off figure overlays them all); the paths written. The
    figures are drawn into a scratch folder beside `out` and moved in together, so a failure leaves none."""
    if x not in OBJECTIVES:
        raise SpecError(f"--saving must be one of {', '.join(OBJECTIVES)} (got {x!r})")
    if y not in ("quality_rel", "quality"):
        raise SpecError(f"--y must be quality_rel or quality (got {y!r})")
    check_budget(budget)
    loaded = [load_for_plot(p) for p in results]
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
