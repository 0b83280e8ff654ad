"""The Florence-2 adapter on tiny random configs of transformers' real class, against its own generate()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mue_bench.models.florence2 import SHAPES, Florence2Batch, random_florence2, random_inputs
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch, run_model

SIZE = SHAPES["tiny"]["image_size"]
LENGTHS = [7, 3, 5]  # prompt lengths: a right-padded batch of three


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def adapter(request):
    return random_florence2("tiny", seed=3, attn_implementation=request.param)


@pytest.fixture(scope="module")
def batch(adapter):
    return random_inputs(adapter, LENGTHS, SIZE, seed=0)


def _row(batch: Florence2Batch, b: int) -> Florence2Batch:
    n = int(batch.attention_mask[b].sum())  # alone, a sample has no padding
    return Florence2Batch(batch.input_ids[b:b + 1, :n], batch.attention_mask[b:b + 1, :n],
                          batch.pixel_values[b:b + 1])


DECODINGS = [(1, 0), (1, 3), (3, 0), (4, 2)]  # (num_beams, no_repeat_ngram)


@pytest.mark.parametrize(("beams", "ngram"), DECODINGS)
def test_no_exit_is_token_identical_to_generate(adapter, batch, beams, ngram):
    decoding = adapter.decoding(num_beams=beams, max_len=14, no_repeat_ngram=ngram)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert ours == adapter.reference_generate(batch, decoding)
    for b in range(len(LENGTHS)):
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
    cfg = ExitConfig(tau_img=0.95, tau_txt=0.955, tau_dec=0.93, encoder_mode=mode, kv_fill=kv_fill)
    decoding = adapter.decoding(num_beams=beams, max_len=12)
    together = run_batch(adapter, batch, cfg, decoding).samples
    assert any(s.enc_img_layers < adapter.n_enc_layers for s in together)
    assert any(u < adapter.n_dec_layers for s in together for u in s.dec_layers)
    for b, s in enumerate(together):
        alone = run_batch(adapter, _row(batch, b), cfg, decoding).samples[0]
        assert (s.tokens, s.enc_img_layers, s.enc_txt_layers, s.dec_layers) == \
            (alone.tokens, alone.enc_img_layers, alone.enc_txt_layers, alone.dec_layers)


@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
def test_every_kv_fill_leaves_equal_cache_lengths(adapter, batch, kv_fill):
    cfg = ExitConfig(tau_img=0.95, tau_txt=0.955, tau_dec=0.9, encoder_mode="freeze", kv_fill=kv_fill)
    raw = run_model(adapter, batch, cfg, adapter.decoding(max_len=10))
    cache, steps = raw.stepper.cache, len(raw.stepper.layers)
    assert any(int(u.min()) < adapter.n_dec_layers for u in raw.stepper.layers)
    assert [cache.length(layer) for layer in range(adapter.n_dec_layers)] == [steps] * adapter.n_dec_layers
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


@pytest.mark.parametrize("queries", [slice(0, 5), slice(5, None)])
def test_query_subset_layer_matches_the_full_layer(adapter, batch, queries):
    """freeze mode's saving: updating one modality's positions gives what the full layer gives there."""
    h = adapter.embed_streams(batch)
    h, mask = torch.cat([h.image, h.text], 1), torch.cat([h.image_mask, h.text_mask], 1)
    full = adapter.encoder_layer(0, h, mask)
    part = adapter.encoder_layer(0, h, mask, queries)
    torch.testing.assert_close(part, full[:, queries], rtol=1e-5, atol=1e-5)


def _florence_spec(tmp_path, shapes_root, encoder_mode: str = "freeze") -> Path:
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
family = "florence2"
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


def test_a_florence2_spec_sweeps_end_to_end(tmp_path, shapes_root):
    from mue_bench.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    warnings: list[str] = []
    outcome = run_sweep(load_spec(_florence_spec(tmp_path, shapes_root)), SweepOptions(meteor=False),
                        Progress(warn=warnings.append))
    pts = outcome.points.set_index("point_id")
    assert list(pts.index) == ["full-freeze", "img=0.95-txt=0.955-dec=0.93-freeze-copy-constant",
                               "fixed=2.2.1-freeze-copy-constant"]
    assert pts.loc["full-freeze", "layer_savings"] == 0
    fixed = pts.loc["fixed=2.2.1-freeze-copy-constant"]
    assert (fixed["enc_img_layers"], fixed["enc_txt_layers"], fixed["dec_layers"]) == (2, 2, 1)
    assert pts["model_family"].unique().tolist() == ["florence2"] and not warnings
    assert (tmp_path / "results" / "f2.samples.parquet").is_file()


def test_split_mode_on_a_joint_encoder_warns(tmp_path, shapes_root):
    from mue_bench.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    warnings: list[str] = []
    run_sweep(load_spec(_florence_spec(tmp_path, shapes_root, "split")), SweepOptions(meteor=False),
              Progress(warn=warnings.append))
    assert len(warnings) == 1 and "joint" in warnings[0]


@pytest.mark.parametrize("beams", [1, 3])
def test_ignore_eos_generates_max_len_tokens_like_min_new_tokens(adapter, batch, beams):
    decoding = adapter.decoding(num_beams=beams, max_len=9, ignore_eos=True)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert [len(t) for t in ours] == [9] * len(LENGTHS)
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
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=fixed)
    one = _row(batch, 0)
    decoding = adapter.decoding(max_len=6, ignore_eos=True)
    adapter.input_flops(one)  # counted once per image shape, outside the region below
    counter = FlopCounterMode(display=False)
    with counter:
        [sample] = run_batch(adapter, one, cfg, decoding).samples
    measured = counter.get_total_flops() - 2 * adapter.model.lm_head.weight.numel() * len(sample.tokens)
    assert sample.flops == pytest.approx(measured, rel=0.05)
