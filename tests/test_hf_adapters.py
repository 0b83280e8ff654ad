"""The transformers adapters (Florence-2, T5Gemma 2) on tiny random configs of the real classes, against
each model's own generate(). Every test runs for both families and both attention implementations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mue_bench.models.hf import florence2, t5gemma2
from mue_bench.models.hf.base import HFBatch
from mue_bench.mue.adapter import compacts
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch, run_model
from tests.conftest import RowCounter

N_SAMPLES = 3  # a right-padded batch of three


def _inputs(family: str, adapter) -> HFBatch:
    if family == "florence2":
        return florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)
    return t5gemma2.random_inputs(adapter, [(2, 5), (1, 1), (3, 2)], seed=0)  # words before and after the image


@pytest.fixture(scope="module", params=[("florence2", "sdpa"), ("florence2", "eager"), ("t5gemma2", "sdpa"),
                                        ("t5gemma2", "eager")], ids=lambda p: "-".join(p))
def family_adapter(request):
    family, impl = request.param
    make = florence2.random_florence2 if family == "florence2" else t5gemma2.random_t5gemma2
    adapter = make("tiny", seed=3, attn_implementation=impl)
    return family, adapter, _inputs(family, adapter)


@pytest.fixture(scope="module")
def adapter(family_adapter):
    return family_adapter[1]


@pytest.fixture(scope="module")
def batch(family_adapter):
    return family_adapter[2]


def _row(batch: HFBatch, b: int) -> HFBatch:
    return batch.row(b)  # alone, a sample has no padding


def _median_thresholds(adapter, batch, mode: str, **kw) -> ExitConfig:
    """Thresholds near the median similarity of each stream in a full run, so that some exits fire and some
    do not, whatever the model's similarity range (random Florence-2 and T5Gemma 2 differ). Each sits halfway
    between two observed values, so float noise between a batch and a lone sample cannot flip a decision."""
    full = run_batch(adapter, batch, ExitConfig(encoder_mode=mode), adapter.decoding(max_len=12)).samples

    def between(values: list[float]) -> float:
        v = sorted(x for x in values if x == x)  # drop NaN
        return (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    med = [between([v for s in full for v in vals(s)]) for vals in (
        lambda s: s.enc_img_sims, lambda s: s.enc_txt_sims, lambda s: [v for d in s.dec_sims for v in d])]
    return ExitConfig(tau_img=med[0], tau_txt=med[1], tau_dec=med[2], encoder_mode=mode, **kw)


DECODINGS = [(1, 0), (1, 3), (3, 0), (4, 2)]  # (num_beams, no_repeat_ngram)


@pytest.mark.parametrize(("beams", "ngram"), DECODINGS)
def test_no_exit_is_token_identical_to_generate(adapter, batch, beams, ngram):
    decoding = adapter.decoding(num_beams=beams, max_len=14, no_repeat_ngram=ngram)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert ours == adapter.reference_generate(batch, decoding)
    for b in range(N_SAMPLES):
        one = _row(batch, b)
        assert [s.tokens for s in run_batch(adapter, one, ExitConfig(encoder_mode="freeze"), decoding).samples] \
            == adapter.reference_generate(one, decoding)


def test_generations_are_not_degenerate(adapter, batch):
    """Guards the exactness test against passing vacuously: outputs vary by sample and by step, some end early."""
    out = adapter.reference_generate(batch, adapter.decoding(max_len=14))
    assert len({tuple(t) for t in out}) == len(out)
    assert all(len(set(t)) > 3 for t in out)
    assert any(t[-1] == adapter.eos_id and len(t) < 14 for t in out)


@pytest.mark.parametrize("mode", ["freeze", "split"])
@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 3])
def test_exits_in_a_padded_batch_equal_exits_alone(adapter, batch, mode, kv_fill, beams):
    cfg = _median_thresholds(adapter, batch, mode, kv_fill=kv_fill)
    decoding = adapter.decoding(num_beams=beams, max_len=12)
    together = run_batch(adapter, batch, cfg, decoding).samples
    assert any(s.enc_img_layers < adapter.n_enc_layers for s in together)
    assert any(u < adapter.n_dec_layers for s in together for u in s.dec_layers)
    for b, s in enumerate(together):
        alone = run_batch(adapter, _row(batch, b), cfg, decoding).samples[0]
        assert (s.tokens, s.enc_img_layers, s.enc_txt_layers, s.dec_layers) == \
            (alone.tokens, alone.enc_img_layers, alone.enc_txt_layers, alone.dec_layers)


@pytest.mark.parametrize("mode", ["freeze", "split"])
@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batch_compaction_computes_fewer_rows_and_changes_no_result(family_adapter, mode, kv_fill, beams):
    """Both families run each layer on the rows still active only (T5Gemma 2 with each row's own positions
    and masks), with the same results as running exited rows masked."""
    family, adapter, batch = family_adapter
    assert compacts(adapter)
    cfg = _median_thresholds(adapter, batch, mode, kv_fill=kv_fill)
    decoding = adapter.decoding(num_beams=beams, max_len=12)
    counter = RowCounter(adapter)
    try:
        compacted = run_batch(adapter, batch, cfg, decoding).samples
        compacted_rows, counter.rows = counter.rows, 0
        adapter.row_subsets = False
        masked = run_batch(adapter, batch, cfg, decoding).samples
    finally:  # the adapter is shared by the module's tests
        counter.restore()
        vars(adapter).pop("row_subsets", None)
    assert compacted_rows < counter.rows
    for c, m in zip(compacted, masked):
        assert (c.tokens, c.enc_img_layers, c.enc_txt_layers, c.dec_layers, c.flops) == \
            (m.tokens, m.enc_img_layers, m.enc_txt_layers, m.dec_layers, m.flops)


@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
def test_every_kv_fill_leaves_equal_cache_lengths(adapter, batch, kv_fill):
    cfg = _median_thresholds(adapter, batch, "freeze", kv_fill=kv_fill)
    raw = run_model(adapter, batch, cfg, adapter.decoding(max_len=10))
    cache, steps = raw.stepper.cache, len(raw.stepper.layers)
    assert any(int(u.min()) < adapter.n_dec_layers for u in raw.stepper.layers)
    assert [cache.length(layer) for layer in range(adapter.n_dec_layers)] == [steps] * adapter.n_dec_layers
    for entry in cache.hf.self_attention_cache.layers:  # a sliding-window layer keeps its last window - 1
        window = getattr(entry, "sliding_window", None)
        assert entry.keys.shape[2] == (steps if window is None else min(steps, window - 1))
    cross = cache.hf.cross_attention_cache.layers
    enc_len = batch.input_ids.shape[1]
    for layer in range(adapter.n_dec_layers):
        if cache.hf.is_updated.get(layer):
            assert cross[layer].keys.shape[2] == enc_len


def test_fixed_exit_uses_exactly_the_given_layers(adapter, batch):
    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=(2, 3, 1))
    samples = run_batch(adapter, batch, cfg, adapter.decoding(max_len=6)).samples
    assert {(s.enc_img_layers, s.enc_txt_layers) for s in samples} == {(2, 3)}
    assert {u for s in samples for u in s.dec_layers} == {1}


def test_exiting_changes_the_computation(adapter, batch):
    """With thresholds below every similarity, everything exits after one layer and the output changes."""
    full = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), adapter.decoding(max_len=8)).samples
    cfg = ExitConfig(tau_img=-1, tau_txt=-1, tau_dec=-1, encoder_mode="freeze")
    early = run_batch(adapter, batch, cfg, adapter.decoding(max_len=8)).samples
    assert all(s.enc_img_layers == 1 and set(s.dec_layers) == {1} for s in early)
    assert [s.tokens for s in early] != [s.tokens for s in full]
    assert torch.isfinite(torch.tensor([s.flops for s in early])).all()


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("layer", [0, 1])  # T5Gemma 2: a sliding-window layer and a full one
def test_query_subset_layer_matches_the_full_layer(adapter, batch, modality, layer):
    """freeze mode's saving: updating one modality's positions gives what the full layer gives there."""
    streams = adapter.embed_streams(batch)
    n_img = streams.image.shape[1]
    queries = slice(0, n_img) if modality == "image" else slice(n_img, None)
    h, mask = torch.cat([streams.image, streams.text], 1), torch.cat([streams.image_mask, streams.text_mask], 1)
    full = adapter.encoder_layer(layer, h, mask)
    part = adapter.encoder_layer(layer, h, mask, queries)
    torch.testing.assert_close(part, full[:, queries], rtol=1e-5, atol=1e-5)


def _spec(tmp_path, shapes_root, family: str, encoder_mode: str = "freeze") -> Path:
    import json

    rows = json.loads((shapes_root / "dataset_coco.json").read_text())["images"][:3]
    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"id": r["cocoid"], "image": f"{r['filepath']}/{r['filename']}",
                                        "prompt": "<CAPTION>", "references": [s["raw"] for s in r["sentences"]]})
                            + "\n" for r in rows))
    spec = tmp_path / "f2.toml"
    spec.write_text(f"""
name = "f2"
[model]
family = "{family}"
checkpoint = "random:tiny"
[data]
dataset = "jsonl"
annotations = "{data}"
images = "{shapes_root}"
[decoding]
max_len = 6
num_beams = 2
[grid]
tau_img = [0.95]
tau_txt = [0.955]
tau_dec = [0.93]
encoder_mode = ["{encoder_mode}"]
fixed_exit = [[2, 2, 1]]
[run]
batch_size = 2
device = "cpu"
[timing]
warmup = 0
[output]
dir = "{tmp_path / 'results'}"
""")
    return spec


@pytest.mark.parametrize("family", ["florence2", "t5gemma2"])
def test_a_spec_sweeps_end_to_end(tmp_path, shapes_root, family):
    from mue_bench.run.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    warnings: list[str] = []
    outcome = run_sweep(load_spec(_spec(tmp_path, shapes_root, family)), SweepOptions(meteor=False),
                        Progress(warn=warnings.append))
    pts = outcome.points.set_index("point_id")
    assert list(pts.index) == ["full-freeze", "img=0.95-txt=0.955-dec=0.93-freeze-copy-constant",
                               "fixed=2.2.1-freeze-copy-constant"]
    assert pts.loc["full-freeze", "layer_savings"] == 0
    fixed = pts.loc["fixed=2.2.1-freeze-copy-constant"]
    assert (fixed["enc_img_layers"], fixed["enc_txt_layers"], fixed["dec_layers"]) == (2, 2, 1)
    assert pts["model_family"].unique().tolist() == [family] and not warnings
    assert (tmp_path / "results" / "f2.samples.parquet").is_file()


@pytest.mark.parametrize("family", ["florence2", "t5gemma2"])
def test_split_mode_on_a_joint_encoder_warns(tmp_path, shapes_root, family):
    from mue_bench.run.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    warnings: list[str] = []
    run_sweep(load_spec(_spec(tmp_path, shapes_root, family, "split")), SweepOptions(meteor=False),
              Progress(warn=warnings.append))
    assert len(warnings) == 1 and "joint" in warnings[0]


@pytest.mark.parametrize("beams", [1, 3])
def test_ignore_eos_generates_max_len_tokens_like_min_new_tokens(adapter, batch, beams):
    decoding = adapter.decoding(num_beams=beams, max_len=9, ignore_eos=True)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert [len(t) for t in ours] == [9] * N_SAMPLES
    assert ours == adapter.reference_generate(batch, decoding)


def test_flops_include_the_vision_tower_that_no_exit_skips(adapter, batch):
    full = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), adapter.decoding(max_len=4)).samples
    vision = adapter.input_flops(batch)
    assert vision > 0 and all(s.flops > vision for s in full)
    early = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze", fixed_exit=(1, 1, 1)),
                      adapter.decoding(max_len=4, ignore_eos=True)).samples
    assert all(vision < s.flops < f.flops for s, f in zip(early, full))


@pytest.mark.parametrize("fixed", [None, (2, 3, 1)])
def test_analytic_flops_agree_with_torch_flop_counter(adapter, batch, fixed):
    """The cost model behind flop_savings, checked against what torch counts the engine actually doing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=fixed)
    one = _row(batch, 0)
    decoding = adapter.decoding(max_len=6, ignore_eos=True)
    adapter.input_flops(one)  # counted once per image shape, outside the region below
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the counter does not see CPU's fused flash kernel
        [sample] = run_batch(adapter, one, cfg, decoding).samples
    measured = counter.get_total_flops() - 2 * adapter.model.get_output_embeddings().weight.numel() * len(sample.tokens)
    assert sample.flops == pytest.approx(measured, rel=0.05)


def test_the_kv_cache_goes_by_the_name_the_installed_transformers_takes():
    from mue_bench.models.hf.base import cache_kwarg

    def new_style(x, cache=None): ...  # transformers >= 5.24
    def old_style(x, past_key_values=None): ...

    assert cache_kwarg(new_style, "kv") == {"cache": "kv"}
    assert cache_kwarg(old_style, "kv") == {"past_key_values": "kv"}


def test_a_transformers_checkpoint_folder_that_does_not_load_is_bad_input(tmp_path):
    from mue_bench.errors import SpecError
    from mue_bench.models.hf.florence2 import Florence2Adapter
    from mue_bench.spec import Checkpoint

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="cannot load Florence2ForConditionalGeneration"):
        Florence2Adapter.load(Checkpoint("folder", str(tmp_path)))
