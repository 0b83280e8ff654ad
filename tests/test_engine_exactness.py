"""With every threshold above 1 the engine is the model: token-identical to its own generation."""

import pytest

from mue_bench.mue import ExitConfig, run_batch
from tests.conftest import padded_batch, random_tiny


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("attention,mode", [("split", "split"), ("joint", "freeze")])
@pytest.mark.parametrize("fill", ["copy", "propagate", "official"])
def test_no_exit_reproduces_plain_generation_in_a_padded_batch(beams, attention, mode, fill):
    adapter = random_tiny(attention)
    batch = padded_batch()
    decoding = adapter.decoding(num_beams=beams, max_len=12, no_repeat_ngram=3)
    expected = adapter.reference_generate(batch, decoding)
    got = run_batch(adapter, batch, ExitConfig(encoder_mode=mode, kv_fill=fill), decoding)
    assert [s.tokens for s in got.samples] == expected
    assert all(s.enc_img_layers == s.enc_txt_layers == 6 for s in got.samples)
    assert all(set(s.dec_layers) == {6} for s in got.samples)


@pytest.mark.parametrize("beams", [1, 3])
def test_no_exit_reproduces_plain_generation_at_batch_one(beams):
    adapter = random_tiny()
    decoding = adapter.decoding(num_beams=beams, max_len=12)
    for i in range(3):
        single = padded_batch().select([i])
        assert run_batch(adapter, single, ExitConfig(), decoding).samples[0].tokens == \
            adapter.reference_generate(single, decoding)[0]


def test_generation_varies_so_the_comparison_means_something():
    adapter = random_tiny()
    tokens = adapter.reference_generate(padded_batch(), adapter.decoding(max_len=12))
    assert len({tuple(t) for t in tokens}) == 3
    assert len({tok for t in tokens for tok in t}) >= 6


def test_official_schedule_with_threshold_above_one_never_exits():
    adapter = random_tiny()
    decoding = adapter.decoding(max_len=12)
    cfg = ExitConfig(tau_dec=1.01, dec_schedule="official")
    got = run_batch(adapter, padded_batch(), cfg, decoding)
    assert all(set(s.dec_layers) == {6} for s in got.samples)
