"""The authors' released behaviours, each switchable on its own (mue/config.py ExitConfig, spec grid.parity),
shown to be really there: batch-global exits, the missing KV fill, the per-layer LM head."""

import textwrap

import pytest
import torch

from mue_bench.errors import SpecError
from mue_bench.mue import ExitConfig
from mue_bench.mue.engine import run_model
from mue_bench.mue.search import DecodingConfig
from mue_bench.spec import load_spec
from tests.conftest import padded_batch, random_tiny

DECODING = DecodingConfig(1, 2, 0, max_len=8, ignore_eos=True)
TAUS = [round(0.05 * i, 2) for i in range(-4, 20)]


def _exits(adapter, batch, cfg):
    raw = run_model(adapter, batch, cfg, DECODING)
    dec = torch.stack(raw.stepper.layers, 1)
    return raw.encoder.img_layers.tolist(), raw.encoder.txt_layers.tolist(), dec.tolist(), raw


@pytest.mark.parametrize("mode", ["split", "freeze"])
def test_batch_scope_makes_a_samples_exits_depend_on_its_batch_mates(mode):
    adapter, batch = random_tiny(mode == "freeze" and "joint" or "split"), padded_batch()
    differs = False
    for tau in TAUS:
        cfg = ExitConfig(tau, tau, tau, encoder_mode=mode, exit_scope="batch")
        together = _exits(adapter, batch, cfg)
        alone = _exits(adapter, batch.select([0]), cfg)
        differs |= (together[0][0], together[1][0], together[2][0]) != (alone[0][0], alone[1][0], alone[2][0])
        assert len(set(together[0])) == 1 and len(set(together[1])) == 1  # the batch exits together
    assert differs


@pytest.mark.parametrize("mode", ["split", "freeze"])
def test_batch_scope_equals_sample_scope_for_one_unpadded_sample(mode):
    adapter = random_tiny(mode == "freeze" and "joint" or "split")
    one = padded_batch().select([0])  # the longest prompt: alone it has no padding
    for tau in TAUS[::3]:
        sample = _exits(adapter, one, ExitConfig(tau, tau, tau, encoder_mode=mode))
        batch = _exits(adapter, one, ExitConfig(tau, tau, tau, encoder_mode=mode, exit_scope="batch"))
        assert sample[:3] == batch[:3] and sample[3].tokens == batch[3].tokens


def _first_exiting_tau(adapter, batch, fill):
    for tau in TAUS:
        cfg = ExitConfig(2.0, 2.0, tau, kv_fill=fill, exit_scope="batch")
        dec = _exits(adapter, batch, cfg)[2]
        steps = dec[0]
        if any(steps[t] < max(steps[t + 1:]) for t in range(len(steps) - 1)):  # a later token goes deeper
            return tau
    raise AssertionError("no decoder threshold exits early")


def test_kv_fill_none_leaves_skipped_layers_short_and_changes_later_tokens():
    adapter, batch = random_tiny(), padded_batch()
    tau = _first_exiting_tau(adapter, batch, "none")
    none = _exits(adapter, batch, ExitConfig(2.0, 2.0, tau, kv_fill="none", exit_scope="batch"))
    copy = _exits(adapter, batch, ExitConfig(2.0, 2.0, tau, kv_fill="copy", exit_scope="batch"))
    cache, steps = none[3].stepper.cache, none[2][0]
    for layer in range(adapter.n_dec_layers):  # a layer holds one entry per step that reached it
        assert cache.length(layer) == sum(u > layer for u in steps)
    assert cache.length(adapter.n_dec_layers - 1) < cache.length(0)
    assert all(copy[3].stepper.cache.length(layer) == len(steps) for layer in range(adapter.n_dec_layers))
    first = next(t for t in range(len(steps) - 1) if steps[t] < max(steps[t + 1:]))
    sims_none = torch.stack(none[3].stepper.sims)[first + 1:]
    sims_copy = torch.stack(copy[3].stepper.sims)[first + 1:]
    assert not torch.allclose(sims_none.nan_to_num(), sims_copy.nan_to_num())


def test_head_every_layer_adds_the_heads_flops_per_executed_layer_that_goes_on():
    from mue_bench.mue.engine import collect

    adapter, batch = random_tiny(), padded_batch()
    head = adapter.dims.head()
    assert head == 2 * adapter.dims.d_model * adapter.model.cfg.vocab_size
    for cfg in (ExitConfig(), ExitConfig(0.3, 0.3, 0.3)):
        plain = collect(adapter, run_model(adapter, batch, cfg, DECODING), cfg)
        heads_cfg = ExitConfig(cfg.tau_img, cfg.tau_txt, cfg.tau_dec, head_every_layer=True)
        with_heads = collect(adapter, run_model(adapter, batch, heads_cfg, DECODING), heads_cfg)
        for a, b in zip(plain.samples, with_heads.samples):
            assert a.tokens == b.tokens and a.dec_layers == b.dec_layers  # the head changes the cost only
            L = adapter.n_dec_layers
            expected = sum(u if u == L else u - 1 for u in a.dec_layers)
            assert b.flops - a.flops == pytest.approx(expected * head)


def _spec(tmp_path, body: str):
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent(body))
    return load_spec(path)


def test_parity_sets_every_quirk_and_names_them_in_the_point_id(tmp_path):
    spec = _spec(tmp_path, """
        [grid]
        parity = true
        tau_img = [0.99]
        tau_txt = [0.7]
        tau_dec = [0.9]
        """)
    full, point = spec.points()
    assert full.point_id == "full-split-head" and full.head_every_layer
    assert point.point_id == "img=0.99-txt=0.7-dec=0.9-split-none-official-batch-head"
    assert (point.exit_scope, point.kv_fill, point.dec_schedule, point.encoder_mode) == ("batch", "none",
                                                                                         "official", "split")
    assert point.reference_id == full.point_id


@pytest.mark.parametrize("body, message", [
    ("[grid]\nparity = true\nkv_fill = [\"copy\"]\n", "parity = true sets kv_fill"),
    ("[grid]\nkv_fill = [\"none\"]\n[run]\nbatch_size = 2\n", "batch_size = 1"),
    ("[model]\nfamily = \"florence2\"\ncheckpoint = \"random:tiny\"\n[grid]\nkv_fill = [\"none\"]\n"
     "exit_scope = [\"batch\"]\n", "one length for every layer"),
])
def test_quirk_combinations_that_cannot_run_are_refused_at_load(tmp_path, body, message):
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, body)


# --- OFA: the image stream's bias, and kv_fill "none" with the authors' bias slicing ----------------------------

@pytest.fixture(scope="module")
def ofa():
    from tests.test_ofa_model import _batch, tiny_adapter

    return tiny_adapter(), _batch()


def test_every_family_counts_its_heads_flops():
    from mue_bench.models.hf.random import random_hf_model
    from tests.test_ofa_model import tiny_adapter

    for adapter in (random_tiny(), tiny_adapter(), random_hf_model("florence2", "tiny", 1)[0],
                    random_hf_model("t5gemma2", "tiny", 1)[0]):
        assert adapter.dims.head() == 2 * adapter.dims.d_model * adapter.dims.vocab > 0


def test_ofa_parity_drops_the_image_streams_relative_bias_only(ofa):
    adapter, batch = ofa
    enc = adapter.model.encoder
    adapter.embed_streams(batch)
    pos = adapter._positions
    n_img = pos.n_img
    plain = enc.layer_bias(pos, 0, "image", image_rel=False)
    assert torch.equal(plain[0], pos.abs_bias[:, :n_img, :n_img])
    assert not torch.allclose(enc.layer_bias(pos, 0, "image"), plain)
    assert torch.equal(enc.layer_bias(pos, 0, "text", image_rel=False), enc.layer_bias(pos, 0, "text"))
    cfg = ExitConfig(encoder_mode="split")
    with_bias = run_model(adapter, batch, cfg, DECODING).encoder.out
    adapter.image_rel_bias = False
    try:
        without = run_model(adapter, batch, cfg, DECODING).encoder.out
    finally:
        adapter.image_rel_bias = True
    assert not torch.allclose(with_bias[:, :n_img], without[:, :n_img])


def test_ofa_kv_fill_none_keeps_short_layers_and_their_keys_take_the_last_positions_bias(ofa):
    adapter, batch = ofa
    tau = _first_exiting_tau(adapter, batch, "none")
    none = _exits(adapter, batch, ExitConfig(2.0, 2.0, tau, kv_fill="none", exit_scope="batch"))
    copy = _exits(adapter, batch, ExitConfig(2.0, 2.0, tau, kv_fill="copy", exit_scope="batch"))
    steps = none[2][0]
    for layer in range(adapter.n_dec_layers):
        assert none[3].stepper.cache.length(layer) == sum(u > layer for u in steps)
    assert none[3].tokens != copy[3].tokens or not torch.allclose(
        torch.stack(none[3].stepper.sims).nan_to_num(), torch.stack(copy[3].stepper.sims).nan_to_num())


def test_ofa_parity_spec_sets_the_image_bias_and_other_families_refuse_it(tmp_path):
    spec = _spec(tmp_path, """
        [model]
        family = "ofa"
        checkpoint = "random:tiny"
        [grid]
        parity = true
        """)
    assert spec.model.image_rel_bias is False
    with pytest.raises(SpecError, match="image_rel_bias is an OFA setting"):
        _spec(tmp_path, "[model]\nimage_rel_bias = false\n")
