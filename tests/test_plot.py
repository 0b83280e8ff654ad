"""The figures explain themselves: thresholds in words and as format_tau writes them, hover titles per point,
readable cell text, and every figure written for a file of one point, several files and older files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from mue_bench.analysis import plot
from mue_bench.results import POINTS_SCHEMA, SAMPLES_SCHEMA, conform, samples_path_for, write_atomic

SVG = "{http://www.w3.org/2000/svg}"
N = 6  # samples per point
LAYERS = 4  # per stream
FIGURES = ("tradeoff-layer-quality_rel", "realization", "heatmap-quality_rel", "heatmap-layer_savings",
           "exit-histograms")


def _results(grid: list[tuple[float, float, float, int, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The full model and one point per (τ_img, τ_txt, τ_dec, layers per stream, CIDEr per sample)."""
    points, samples = [], []
    for tau_img, tau_txt, tau_dec, layers, cider in [(2.0, 2.0, 2.0, LAYERS, 1.0)] + grid:
        full = min(tau_img, tau_txt, tau_dec) > 1
        pid = "full-split" if full else f"img={tau_img}-txt={tau_txt}-dec={tau_dec}-split-copy-constant"
        used = 3 * layers * N
        points.append(dict(
            point_id=pid, reference_id="full-split", status="ok", is_full=full, tau_img=tau_img, tau_txt=tau_txt,
            tau_dec=tau_dec, encoder_mode="split", kv_fill="copy", dec_schedule="constant", n=N,
            layers_used=used, layers_full=3 * LAYERS * N, layer_savings=1 - layers / LAYERS,
            flop_savings=1 - layers / LAYERS, time_savings=0.8 * (1 - layers / LAYERS), quality_metric="cider",
            quality=cider, quality_full=1.0, quality_rel=cider, cider=cider, task="caption", spec_name="tiny",
            checkpoint="ckpt/mue-tiny", dataset="shapes", split="test", device_name="cpu"))
        samples += [dict(point_id=pid, sample_index=i, sample_id=str(i), enc_img_layers=layers,
                         enc_txt_layers=layers, dec_layers=[layers, layers], layers_used=3 * layers,
                         flops=float(3 * layers), cider=cider) for i in range(N)]
    return conform(pd.DataFrame(points), POINTS_SCHEMA), conform(pd.DataFrame(samples), SAMPLES_SCHEMA)


GRID = [(0.99, 2.0, 0.9, 2, 0.995), (0.99, 0.9, 0.9, 1, 0.9), (0.9, 2.0, 0.9, 3, 1.0),
        (0.9, 0.9, 0.9, 3, 1.0),  # at the same place as the one before it
        (0.99, 2.0, 0.95, 2, 0.97)]


def _write(tmp_path: Path, name: str, results: tuple[pd.DataFrame, pd.DataFrame]) -> Path:
    path = tmp_path / f"{name}.parquet"
    write_atomic(results[0], POINTS_SCHEMA, path)
    write_atomic(results[1], SAMPLES_SCHEMA, samples_path_for(path))
    return path


def _svg(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _texts(path: Path) -> list[str]:
    """The text of an SVG written with svg.fonttype "none" (text as text, not as glyph outlines)."""
    return ["".join(t.itertext()).strip() for t in _svg(path).iter(f"{SVG}text")]


@pytest.fixture
def text_svg():
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        yield


def test_svg_has_one_title_per_grid_point_carrying_its_thresholds(tmp_path):
    points, samples = _results(GRID)
    plot.tradeoff([(points, samples)], tmp_path)
    titles = [t.text for t in _svg(tmp_path / "tradeoff-layer-quality_rel.svg").iter(f"{SVG}title")]
    assert len(titles) == len(points)
    for row in points.itertuples():
        mine = [t for t in titles if f"[{row.point_id}]" in t]
        assert len(mine) == 1, row.point_id
        assert mine[0].startswith(plot.thresholds_in_words(points.loc[row.Index]))
    assert any(t.startswith("τ_img 0.99, τ_txt off, τ_dec 0.9: 50.0% layer savings, 99.5% quality") for t in titles)
    assert any(t.startswith("the full model (nothing exits)") for t in titles)


def test_tradeoff_labels_the_front_by_thresholds_counts_coinciding_points_and_names_the_pick(tmp_path, text_svg):
    points, samples = _results(GRID)
    plot.tradeoff([(points, samples)], tmp_path)
    texts = _texts(tmp_path / "tradeoff-layer-quality_rel.svg")
    assert "(0.99, off, 0.9)" in texts  # the pick, on the front
    assert "(0.99, 0.9, 0.9)" in texts  # the front's most saving point
    assert any(t.startswith("(0.9, off, 0.9) ×2") for t in texts)  # the conservative one of the two at one place
    assert "×2" in texts
    assert "picked: τ_img 0.99, τ_txt off, τ_dec 0.9 — 50.0% layer savings at 99.5% quality" in texts
    assert not any("img=" in t for t in texts)  # no raw point ids


def test_picked_label_is_in_words():
    row = pd.Series(dict(is_full=False, fixed_exit=None, tau_img=0.99, tau_txt=2.0, tau_dec=0.9,
                         layer_savings=0.6190, flop_savings=0.2642, quality_rel=0.99438))
    words = "picked: τ_img 0.99, τ_txt off, τ_dec 0.9 — 61.9% layer savings at 99.4% quality"
    assert plot.picked_in_words(row) == words
    assert plot.picked_in_words(row, "flop_savings").endswith("— 26.4% FLOP savings at 99.4% quality")
    full = row.copy()
    full["is_full"], full["tau_img"], full["tau_dec"] = True, 2.0, 2.0
    assert plot.thresholds_in_words(full) == "the full model (nothing exits)"


def test_heatmap_ticks_write_thresholds_above_one_as_off(tmp_path, text_svg):
    points, _ = _results(GRID)
    plot.heatmaps(points, tmp_path)
    texts = _texts(tmp_path / "heatmap-quality_rel.svg")
    assert texts.count("off") == 2  # τ_txt off, in both τ_dec panels
    assert "2" not in texts
    assert "τ_dec 0.9" in texts and "τ_dec 0.95" in texts
    assert "quality relative to the full model (%)" in texts  # the colour bar's name, not a column name
    assert not any("quality_rel" in t for t in texts)
    assert "not run" in texts  # (0.99, 0.9) at τ_dec 0.95


def test_cell_text_colour_follows_luminance():
    assert plot.text_color("#fde725") == "black"  # viridis' bright (yellow) end
    assert plot.text_color("#440154") == "white"  # its dark end
    assert plot.text_color((1.0, 1.0, 1.0, 1.0)) == "black"
    assert plot.text_color("navy") == "white"


def test_one_point_file_writes_every_figure(tmp_path):
    path = _write(tmp_path, "full", _results([]))
    written = {p.name for p in plot.plot_files([path], tmp_path / "plots")}
    assert written == {f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "svg")}
    titles = list(_svg(tmp_path / "plots" / "tradeoff-layer-quality_rel.svg").iter(f"{SVG}title"))
    assert len(titles) == 1


def test_several_files_share_the_tradeoff_figure(tmp_path):
    a = _write(tmp_path, "a", _results(GRID))
    b = _write(tmp_path, "b", _results(GRID[:2]))
    plot.plot_files([a, b], tmp_path / "plots", x="time")
    titles = list(_svg(tmp_path / "plots" / "tradeoff-time-quality_rel.svg").iter(f"{SVG}title"))
    assert len(titles) == (1 + len(GRID)) + (1 + 2)


def test_older_files_without_later_columns_still_plot(tmp_path):
    """The committed CI baseline predates reference_id, the time intervals and the timing warning."""
    points, samples = _results(GRID)
    path = tmp_path / "old.parquet"
    old = ["reference_id", "time_savings_lo", "time_savings_hi", "timing_warning", "n_pairs"]
    points.drop(columns=old).to_parquet(path)
    samples.to_parquet(samples_path_for(path))
    assert len(plot.plot_files([path], tmp_path / "plots")) == 2 * len(FIGURES)
