"""`exit_sync = "lagged"` computes what `eager` computes (mue/sync.py).

The lagged loops launch layer l+1 before reading layer l's exit flags, on the rows last known to be active, and
drop a layer that turns out to have run for nobody, its K/V included. Every decision a run records is eager's:
generated ids, exit layers per stream and per step, FLOPs, LM-head counts, cache lengths. Where both launch every
layer on the same rows and positions (no compaction, exits shared by the whole batch, one sample, fixed exits),
the floats are eager's bit for bit too: similarity traces (NaN where not computed), the encoder output, the KV
cache. Where they cannot be, the traces agree to float noise (`SHAPE_NOISE`): the layer right after a row's exit
runs, lagged, on a superset of eager's rows (compaction with per-sample exits), or on both modalities' queries just
after one saturated (freeze on the transformers adapters, whose query-subset layer is not bitwise the full one),
and a kernel of another shape may round the last bit differently. And the lagged loop must really speculate: on a
batch that exits at layer k everywhere it runs layer k+1 and throws it away.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mue_bench.models.hf import florence2, t5gemma2
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import RawBatch, collect, run_batch, run_model
from mue_bench.mue.sync import Flags
from tests.conftest import padded_batch, random_tiny


def _between(values: list[float]) -> float:
    """Halfway between two observed values near the median: some decisions fire and some do not."""
    v = sorted(x for x in values if x == x)
    return (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _median_thresholds(adapter, batch, decoding, **kw) -> ExitConfig:
    full = run_batch(adapter, batch, ExitConfig(**kw), decoding).samples
    taus = [_between([v for s in full for v in vals(s)]) for vals in (
        lambda s: s.enc_img_sims, lambda s: s.enc_txt_sims, lambda s: [v for d in s.dec_sims for v in d])]
    return ExitConfig(*taus, **kw)


def _cache_state(raw: RawBatch, n_layers: int) -> list[tuple[int, torch.Tensor | None, torch.Tensor | None]]:
    cache = raw.stepper.cache
    return [(cache.length(layer), *(cache.past(layer) or (None, None))) for layer in range(n_layers)]


SHAPE_NOISE = 1e-6  # similarities; measured up to 1.8e-7 (a few float32 ulps) on these models


def _same(a, b, exact: bool, atol: float | None = None) -> None:
    """Equal arrays (NaN where the other has NaN): bit for bit, or to float noise."""
    a, b = torch.as_tensor(np.asarray(a, float) if isinstance(a, list) else a), torch.as_tensor(
        np.asarray(b, float) if isinstance(b, list) else b)
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=0, atol=atol) if atol is not None else {}
    torch.testing.assert_close(a, b, equal_nan=True, **tol)


def assert_lagged_equals_eager(adapter, batch, cfg: ExitConfig, decoding, exact: bool = True) -> list:
    """Runs both and compares every record; returns eager's samples."""
    raws = {sync: run_model(adapter, batch, cfg, decoding, sync) for sync in ("eager", "lagged")}
    eager, lagged = (collect(adapter, raws[s], cfg).samples for s in ("eager", "lagged"))
    for e, g in zip(eager, lagged, strict=True):
        assert e.tokens == g.tokens
        assert (e.enc_img_layers, e.enc_txt_layers, e.dec_layers) == (g.enc_img_layers, g.enc_txt_layers, g.dec_layers)
        assert e.flops == g.flops
        for trace in ("enc_img_sims", "enc_txt_sims", "dec_sims"):  # NaN where not computed, in both
            _same(getattr(e, trace), getattr(g, trace), exact, SHAPE_NOISE)
    _same(raws["eager"].encoder.out, raws["lagged"].encoder.out, exact)
    steppers = [raws[s].stepper for s in ("eager", "lagged")]
    for record in ("layers", "heads"):
        assert torch.equal(*(torch.stack(getattr(st, record)) for st in steppers))
    _same(*(torch.stack(st.final_sims) for st in steppers), exact, SHAPE_NOISE)
    n = adapter.n_dec_layers
    for (len_e, k_e, v_e), (len_l, k_l, v_l) in zip(_cache_state(raws["eager"], n), _cache_state(raws["lagged"], n)):
        assert len_e == len_l
        assert (k_e is None) == (k_l is None)
        if k_e is not None:
            _same(k_e, k_l, exact)
            _same(v_e, v_l, exact)
    return eager


def same_shapes(cfg: ExitConfig, size: int, compact: bool) -> bool:
    """Whether lagged launches every layer on eager's rows: yes unless a compacting batch's rows exit apart."""
    return not (compact and size > 1 and cfg.exit_scope == "sample" and cfg.fixed_exit is None)


def _exits_somewhere(samples, adapter) -> bool:
    return any(u < adapter.n_dec_layers for s in samples for u in s.dec_layers) or any(
        s.enc_img_layers < adapter.n_enc_layers or s.enc_txt_layers < adapter.n_enc_layers for s in samples)


# --- mue-tiny: every setting ---------------------------------------------------------------------------------
MODELS = {"split": "split", "freeze": "joint"}  # encoder mode -> the mue-tiny encoder trained for it


def _tiny_cases():
    for mode, fill, scope, beams, size, compact, head in itertools.product(
            MODELS, ("copy", "propagate", "official", "none"), ("sample", "batch"), (1, 2), (1, 3), (True, False),
            (False, True)):
        if fill == "none" and scope == "sample" and size > 1:
            continue  # refused by the spec: rows of a batch would keep different numbers of entries
        yield pytest.param(mode, fill, scope, beams, size, compact, head,
                           id=f"{mode}-{fill}-{scope}-beams{beams}-batch{size}-{'compact' if compact else 'masked'}"
                              f"{'-head' if head else ''}")


def _tiny(mode: str, size: int, compact: bool):
    adapter = random_tiny(MODELS[mode], seed=1)
    adapter.row_subsets = compact
    batch = padded_batch(seed=1)
    return adapter, batch if size > 1 else batch.select([1])


@pytest.mark.parametrize(("mode", "fill", "scope", "beams", "size", "compact", "head"), list(_tiny_cases()))
def test_lagged_equals_eager_on_mue_tiny_with_threshold_exits(mode, fill, scope, beams, size, compact, head):
    adapter, batch = _tiny(mode, size, compact)
    decoding = adapter.decoding(num_beams=beams, max_len=8, no_repeat_ngram=2)
    cfg = _median_thresholds(adapter, batch, decoding, encoder_mode=mode, kv_fill=fill, exit_scope=scope,
                             head_every_layer=head)
    samples = assert_lagged_equals_eager(adapter, batch, cfg, decoding, same_shapes(cfg, size, compact))
    assert _exits_somewhere(samples, adapter)


@pytest.mark.parametrize("mode", list(MODELS))
@pytest.mark.parametrize("fill", ["copy", "propagate", "official", "none"])
@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("fixed", [(2, 3, 1), (1, 6, 4), (6, 6, 6)])
def test_lagged_equals_eager_on_mue_tiny_with_fixed_exits(mode, fill, beams, compact, fixed):
    adapter, batch = _tiny(mode, 3, compact)
    cfg = ExitConfig(encoder_mode=mode, kv_fill=fill, fixed_exit=fixed)  # every row exits together
    assert_lagged_equals_eager(adapter, batch, cfg, adapter.decoding(num_beams=beams, max_len=8))


# --- speculation really happens -------------------------------------------------------------------------------
class LayerCalls:
    """Counts the engine's layer calls per layer (outermost only: mue-tiny's *_rows call the plain ones)."""

    def __init__(self, adapter):
        self.encoder: list[int] = [0] * adapter.n_enc_layers
        self.decoder: list[int] = [0] * adapter.n_dec_layers
        self._depth = 0
        for name in ("encoder_layer", "encoder_layer_rows", "decoder_layer", "decoder_layer_rows"):
            setattr(adapter, name, self._counting(getattr(adapter, name), name.split("_")[0]))

    def _counting(self, method, side: str):
        def call(layer, *args, **kwargs):
            if self._depth == 0:
                getattr(self, side)[layer] += 1
            self._depth += 1
            try:
                return method(layer, *args, **kwargs)
            finally:
                self._depth -= 1
        return call


@pytest.mark.parametrize("mode", list(MODELS))
@pytest.mark.parametrize("compact", [True, False])
def test_lagged_runs_the_layer_after_a_common_exit_and_discards_it(mode, compact):
    """Every stream exits after k = 2 encoder layers and every token after k = 3 decoder layers: eager never
    touches layer k+1; lagged runs it once per stream (split: image and text) or once (freeze) and once per step,
    and still leaves every record and the cache as eager does."""
    adapter, batch = _tiny(mode, 3, compact)
    cfg = ExitConfig(encoder_mode=mode, fixed_exit=(2, 2, 3))
    decoding = adapter.decoding(max_len=5, ignore_eos=True)  # 5 steps, every sample in every one
    calls = {}
    for sync in ("eager", "lagged"):
        calls[sync] = LayerCalls(adapter)
        run_model(adapter, batch, cfg, decoding, sync)
        for name in ("encoder_layer", "encoder_layer_rows", "decoder_layer", "decoder_layer_rows"):
            delattr(adapter, name)  # the class's methods again
    streams = 2 if mode == "split" else 1
    assert calls["eager"].encoder == [streams, streams, 0, 0, 0, 0]
    assert calls["lagged"].encoder == [streams, streams, streams, 0, 0, 0]
    assert calls["eager"].decoder == [5, 5, 5, 0, 0, 0]
    assert calls["lagged"].decoder == [5, 5, 5, 5, 0, 0]
    assert_lagged_equals_eager(adapter, batch, cfg, decoding)


def test_a_dropped_layer_leaves_a_layer_no_token_reached_without_cache_under_kv_fill_none():
    """kv_fill "none" gives skipped layers no entry: the speculative run's K/V must go, down to "no cache yet"."""
    adapter, batch = _tiny("split", 1, True)
    cfg = ExitConfig(kv_fill="none", fixed_exit=(6, 6, 2))
    raw = run_model(adapter, batch, cfg, adapter.decoding(max_len=4, ignore_eos=True), "lagged")
    assert [raw.stepper.cache.length(layer) for layer in range(6)] == [4, 4, 0, 0, 0, 0]
    assert raw.stepper.cache.past(2) is None


def test_flags_count_each_mask_and_find_its_rows():
    flags = Flags(torch.tensor([True, False, True]), torch.tensor([False, False, False]))
    assert flags.counts == [2, 0]
    assert flags.rows(0).tolist() == [0, 2] and flags.rows(1).tolist() == []


# --- real adapters --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["florence2", "t5gemma2"])
def hf_case(request):
    if request.param == "florence2":
        adapter = florence2.random_florence2("tiny", seed=3)
        batch = florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)
    else:
        adapter = t5gemma2.random_t5gemma2("tiny", seed=3)
        batch = t5gemma2.random_inputs(adapter, [(2, 5), (1, 1), (3, 2)], seed=0)
    return adapter, batch


@pytest.mark.parametrize(("mode", "fill", "scope", "beams", "compact", "head"), [
    ("freeze", "copy", "sample", 1, True, False),
    ("freeze", "propagate", "sample", 3, True, False),
    ("freeze", "official", "sample", 1, True, True),
    ("freeze", "copy", "batch", 3, True, True),
    ("freeze", "propagate", "sample", 1, False, False),
    ("split", "copy", "sample", 3, True, False),
    ("split", "official", "batch", 1, True, False),
    ("split", "propagate", "sample", 1, False, True),
])
def test_lagged_equals_eager_on_the_transformers_adapters(hf_case, mode, fill, scope, beams, compact, head):
    adapter, batch = hf_case
    decoding = adapter.decoding(num_beams=beams, max_len=10)
    cfg = _median_thresholds(adapter, batch, decoding, encoder_mode=mode, kv_fill=fill, exit_scope=scope,
                             head_every_layer=head)
    adapter.row_subsets = compact
    joint_queries = mode == "freeze"  # a saturated modality's queries are dropped one layer later
    try:
        samples = assert_lagged_equals_eager(adapter, batch, cfg, decoding,
                                             same_shapes(cfg, 3, compact) and not joint_queries)
        single = assert_lagged_equals_eager(adapter, batch.row(1), cfg, decoding, not joint_queries)
    finally:  # the adapter is shared by the module's tests
        vars(adapter).pop("row_subsets", None)
    assert _exits_somewhere(samples + single, adapter)


@pytest.mark.parametrize("fixed", [(1, 2, 1), (2, 2, 2)])
def test_lagged_equals_eager_on_the_transformers_adapters_with_fixed_exits(hf_case, fixed):
    adapter, batch = hf_case
    assert_lagged_equals_eager(adapter, batch, ExitConfig(encoder_mode="freeze", fixed_exit=fixed),
                               adapter.decoding(num_beams=2, max_len=8))


@pytest.fixture(scope="module")
def ofa_case():
    from tests.test_ofa_model import _batch, tiny_adapter

    return tiny_adapter(), _batch()


@pytest.mark.parametrize(("mode", "fill", "scope", "beams", "size", "head"), [
    ("freeze", "copy", "sample", 1, 3, False),
    ("freeze", "propagate", "sample", 2, 3, True),
    ("freeze", "official", "batch", 2, 3, False),
    ("freeze", "none", "batch", 1, 3, True),
    ("freeze", "none", "sample", 2, 1, False),
    ("split", "copy", "sample", 2, 3, False),
    ("split", "official", "sample", 1, 1, True),
])
def test_lagged_equals_eager_on_ofa(ofa_case, mode, fill, scope, beams, size, head):
    adapter, batch = ofa_case
    batch = batch if size > 1 else batch.select([1])
    decoding = adapter.decoding(num_beams=beams, max_len=10)
    cfg = _median_thresholds(adapter, batch, decoding, encoder_mode=mode, kv_fill=fill, exit_scope=scope,
                             head_every_layer=head)
    samples = assert_lagged_equals_eager(adapter, batch, cfg, decoding, same_shapes(cfg, size, compact=True))
    assert _exits_somewhere(samples, adapter)


# --- the spec's option ----------------------------------------------------------------------------------------
def test_a_sweep_with_lagged_sync_records_it_and_computes_what_eager_does(tmp_path, shapes_root, random_checkpoint):
    import textwrap

    from mue_bench.run.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    outcomes = {}
    for sync in ("eager", "lagged"):
        path = tmp_path / f"{sync}.toml"
        path.write_text(textwrap.dedent(f"""
            name = "{sync}"
            [model]
            family = "mue-tiny"
            checkpoint = "{random_checkpoint}"
            [data]
            dataset = "shapes"
            root = "{shapes_root}"
            split = "test"
            limit = 4
            [grid]
            tau_img = [0.9]
            tau_txt = [0.9]
            tau_dec = [0.5]
            [run]
            batch_size = 2
            [timing]
            exit_sync = "{sync}"
            [output]
            dir = "{tmp_path / sync}"
        """))
        spec = load_spec(path)
        assert spec.timing.exit_sync == sync
        outcomes[sync] = run_sweep(spec, SweepOptions(meteor=False), Progress())
    eager, lagged = outcomes["eager"], outcomes["lagged"]
    assert eager.points["exit_sync"].tolist() == ["eager"] * 2 and lagged.points["exit_sync"].tolist() == ["lagged"] * 2
    same = ["point_id", "prediction", "tokens", "enc_img_layers", "enc_txt_layers", "dec_layers", "flops"]
    assert eager.samples[same].equals(lagged.samples[same])
