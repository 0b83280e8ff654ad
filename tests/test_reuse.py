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


# --- certificates: a point whose every exit decision a stored run makes the same way is that run's result ---

def _grid(mode: str, scope: str, kv_fills: tuple[str, ...]) -> list:
    """Points in the order a sweep evaluates them (grouped by encoder setting), several decoder settings each.
    On random_tiny's similarities, tau_img 0.6 and 0.7 make the same encoder decisions (so do tau_dec 0.97 and no
    exit), while 0.5 and 0.9 change them: some points are certified by others and some are not."""
    from mue_bench.mue.config import ExitConfig
    from mue_bench.mue.grid_reuse import encoder_setting

    settings = [(kv, "constant", False) for kv in kv_fills] + [(kv_fills[0], "official", False),
                                                               (kv_fills[0], "constant", True)]
    cfgs = [ExitConfig(encoder_mode=mode)] + [
        ExitConfig(ti, tt, td, encoder_mode=mode, kv_fill=kv, dec_schedule=sch, head_every_layer=head,
                   exit_scope=scope).canonical()
        for ti in (0.5, 0.6, 0.7) for tt in (0.8,) for td in (0.3, 0.9, 0.97) for kv, sch, head in settings]
    cfgs = list(dict.fromkeys(cfgs))
    first: dict = {}
    for c in cfgs:
        first.setdefault(encoder_setting(c), len(first))
    return sorted(cfgs, key=lambda c: first[encoder_setting(c)])


def _same_sample(got, want) -> None:
    assert got.tokens == want.tokens
    assert (got.enc_img_layers, got.enc_txt_layers, got.dec_layers) == \
        (want.enc_img_layers, want.enc_txt_layers, want.dec_layers)
    assert got.flops == pytest.approx(want.flops, rel=1e-12)
    for a, b in ((got.enc_img_sims, want.enc_img_sims), (got.enc_txt_sims, want.enc_txt_sims),
                 (got.dec_sims, want.dec_sims)):
        np.testing.assert_allclose(_flat(a), _flat(b), atol=1e-5)


def _shared_equals_full(adapter, decoding, batches, cfgs):
    """Evaluate the grid with certificates, every result against the point run in full; return the GridReuse."""
    from mue_bench.mue.engine import Engine
    from mue_bench.mue.grid_reuse import GridReuse

    engine = Engine(adapter, decoding)
    reuse = GridReuse(adapter, decoding)
    full = 0
    for cfg in cfgs:
        for i, batch in enumerate(batches):
            want = engine.run_batch(batch, cfg).samples
            for got, w in zip(reuse.evaluate(i, 10 * i, batch, cfg).samples, want, strict=True):
                _same_sample(got, w)
            full += sum(w.layers_used for w in want)
    reuse.full_executions = full
    return reuse


@pytest.mark.parametrize("mode,beams", [("split", 1), ("freeze", 1), ("split", 3), ("freeze", 3)])
def test_certified_points_equal_points_run_in_full_for_every_fill_schedule_and_head(mode, beams):
    from tests.conftest import padded_batch, random_tiny

    adapter = random_tiny("joint" if mode == "freeze" else "split")
    decoding = adapter.decoding(num_beams=beams, max_len=8)
    cfgs = _grid(mode, "sample", ("copy", "propagate", "official"))
    reuse = _shared_equals_full(adapter, decoding, [padded_batch(0)], cfgs)
    assert reuse.certified["generations"] > 0 and reuse.certified["encodings"] > 0, reuse.certified
    assert reuse.take_executions() < 0.6 * reuse.full_executions


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_scope_certifies_the_whole_batch_together_every_fill_including_none(beams):
    from tests.conftest import padded_batch, random_tiny

    adapter = random_tiny("split")
    decoding = adapter.decoding(num_beams=beams, max_len=8)
    cfgs = _grid("split", "batch", ("none", "copy", "propagate", "official"))
    reuse = _shared_equals_full(adapter, decoding, [padded_batch(0)], cfgs)
    assert reuse.certified["generations"] > 0 and reuse.certified["encodings"] > 0, reuse.certified


def test_fixed_exits_share_by_exact_setting_only():
    from mue_bench.mue.config import ExitConfig
    from tests.conftest import padded_batch, random_tiny

    adapter = random_tiny("split")
    cfgs = [ExitConfig(encoder_mode="split", fixed_exit=(i, t, d), kv_fill=kv)
            for i, t in ((2, 3), (4, 4)) for d in (1, 3, 6) for kv in ("copy", "propagate")]
    reuse = _shared_equals_full(adapter, adapter.decoding(max_len=6), [padded_batch(0)], cfgs)
    assert reuse.certified == {"encodings": 0, "generations": 0}


def test_a_decoder_certificate_admits_exactly_the_thresholds_between_its_similarities():
    from mue_bench.mue.config import ExitConfig
    from mue_bench.mue.engine import Decoded
    from mue_bench.mue.grid_reuse import DecoderCertificate

    nan = float("nan")
    # 3 layers: step 0 went on after layer 1 (0.5) and exited after layer 2 (0.8); step 1 used every layer;
    # step 2 came after the sample had finished
    run = Decoded([4, 5, 2], [2, 3, 0], [[0.5, 0.8], [0.4, 0.6], [nan, nan]])
    cert = DecoderCertificate.of([run], 3, False, [0.7, 0.7, 0.7])
    admits = {tau: cert.admits(ExitConfig(tau_dec=tau), max_len=3) for tau in (0.59, 0.6, 0.7, 0.79, 0.8, 2.0)}
    assert admits == {0.59: False, 0.6: True, 0.7: True, 0.79: True, 0.8: False, 2.0: False}
    # a run with no exit certifies "no exit" and every threshold at or above its largest similarity
    full = DecoderCertificate.of([Decoded([4], [3], [[0.5, 0.9]])], 3, False, [float("inf")])
    assert full.admits(ExitConfig(), 3) and full.admits(ExitConfig(tau_dec=0.9), 3)
    assert not full.admits(ExitConfig(tau_dec=0.89), 3)
    # the official schedule: the first third of the steps decides nothing, so constrains nothing
    early = DecoderCertificate.of([Decoded([4, 5], [3, 3], [[0.99, 0.99], [0.1, 0.2]])], 3, False,
                                  [float("inf"), 0.9])
    assert early.admits(ExitConfig(tau_dec=0.5, dec_schedule="official"), max_len=2)  # step 0 of 2: no exit
    assert not early.admits(ExitConfig(tau_dec=0.5, dec_schedule="constant"), max_len=2)
    # with head_every_layer the last layer decides whether its head runs: that decision is certified too
    head = DecoderCertificate.of([Decoded([4], [3], [[0.5, 0.6]], 2, [0.95])], 3, True, [0.9])
    assert head.admits(ExitConfig(tau_dec=0.94), 3) and not head.admits(ExitConfig(tau_dec=0.95), 3)


def test_an_encoder_stream_certificate_is_the_engines_own_comparison():
    import torch

    from mue_bench.mue.grid_reuse import stream_certified

    nan = float("nan")
    sims = torch.tensor([[0.5, 0.8, nan], [0.5, 0.6, 0.7]])  # 4 layers: row 0 exited after layer 2, row 1 never
    used = torch.tensor([2, 4])
    for tau, want in ((0.49, [False, False]), (0.5, [True, False]), (0.7, [True, True]), (0.8, [False, True])):
        assert stream_certified(sims, used, tau).tolist() == want, tau
