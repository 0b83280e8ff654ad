"""Grid reuse (timing.batches): the untimed samples come out exactly as if every point ran in full, for less work."""

from __future__ import annotations

import numpy as np
import pytest

from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import load_spec
from tests.test_sweep import TIMING_COLUMNS, write_spec


def _sweep(tmp_path, shapes_root, checkpoint, mode: str, batches: int | None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_spec(tmp_path, shapes_root, checkpoint, name=f"{mode}{batches}")
    spec = load_spec(path)
    grid = spec.grid.model_copy(update={"tau_img": [0.5, 0.9, 2.0], "tau_txt": [0.7, 2.0], "tau_dec": [0.3, 0.9],
                                        "encoder_mode": [mode]})
    spec = spec.model_copy(update={"grid": grid, "data": spec.data.model_copy(update={"limit": 6}),
                                   "timing": spec.timing.model_copy(update={"batches": batches})})
    return run_sweep(spec, SweepOptions(meteor=False, fresh=True))


def _flat(cell) -> np.ndarray:
    """A similarity trace (a list, or a list of lists per step) as one float array."""
    return np.hstack([np.asarray(r, dtype=float).ravel() for r in cell]) if len(cell) else np.zeros(0)


@pytest.mark.parametrize("mode", ["split", "freeze"])
def test_reused_points_equal_points_run_in_full_at_a_fraction_of_the_layers(tmp_path, shapes_root,
                                                                            random_checkpoint, mode):
    full = _sweep(tmp_path / "a", shapes_root, random_checkpoint, mode, None)
    reused = _sweep(tmp_path / "b", shapes_root, random_checkpoint, mode, 1)
    sims = ["enc_img_sims", "enc_txt_sims", "dec_sims"]  # equal up to float noise: sub-batches differ
    a, b = (o.samples.sort_values(["point_id", "sample_index"]).reset_index(drop=True) for o in (full, reused))
    drop = TIMING_COLUMNS + ["peak_mem_bytes"] + sims
    assert a.drop(columns=drop, errors="ignore").equals(b.drop(columns=drop, errors="ignore"))
    for col in sims:
        for x, y in zip(a[col], b[col]):
            np.testing.assert_allclose(_flat(x), _flat(y), atol=1e-5)
    pa, pb = (o.points.set_index("point_id").sort_index() for o in (full, reused))
    for col in ("quality", "layer_savings", "flop_savings", "consistency", "enc_img_layers", "dec_layers"):
        np.testing.assert_array_equal(pa[col].to_numpy(float), pb[col].to_numpy(float))
    # exits vary across the grid, so there is something to share and something not to
    assert pa["layer_savings"].nunique() > 3
    assert reused.layer_executions < 0.9 * full.layer_executions


def test_only_the_first_batches_are_timed_and_wall_time_covers_every_sample(tmp_path, shapes_root, random_checkpoint):
    out = _sweep(tmp_path, shapes_root, random_checkpoint, "split", 1)
    timed = out.samples["batch_index"] == 0
    assert out.samples.loc[timed, "latency_s"].notna().all() and out.samples.loc[~timed, "latency_s"].isna().all()
    pts = out.points
    assert (pts["n_timed"] == 2).all() and (pts["n"] == 6).all()
    assert np.isfinite(pts["time_savings"]).all() and (pts["wall_s"] > 0).all()


def _live_tensor_bytes() -> int:
    import gc
    import warnings

    import torch

    gc.collect()
    with warnings.catch_warnings():  # isinstance on some deprecated torch module objects warns
        warnings.simplefilter("ignore")
        return sum(o.numel() * o.element_size() for o in gc.get_objects()
                   if isinstance(o, torch.Tensor) and not isinstance(o, torch.nn.Parameter))


@pytest.mark.parametrize("batches", [None, 1])
def test_the_sweep_holds_no_tensors_per_finished_point(tmp_path, shapes_root, random_checkpoint, batches):
    """Memory stays flat as the grid grows: after each point, the tensors alive are those of the model, the
    inputs and (with reuse) one encoder setting's outputs, whatever the number of points done."""
    from mue_bench.run.runner import Progress

    live: list[int] = []
    spec = load_spec(write_spec(tmp_path, shapes_root, random_checkpoint))
    grid = spec.grid.model_copy(update={"tau_img": [0.5, 0.9], "tau_txt": [0.7, 0.9, 2.0], "tau_dec": [0.3, 0.9]})
    spec = spec.model_copy(update={"grid": grid, "timing": spec.timing.model_copy(update={"batches": batches})})
    progress = Progress(point_done=lambda pid, ok, summary=None: live.append(_live_tensor_bytes()))
    run_sweep(spec, SweepOptions(meteor=False, fresh=True), progress)
    assert len(live) == 13
    # points are grouped by encoder setting: compare the ends of groups after the first (full model) point
    assert max(live[1:]) <= 1.05 * min(live[1:]), live
