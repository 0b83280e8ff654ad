"""The exit rule fires exactly when similarity > threshold; the schedule is the authors'."""

import math

import numpy as np
import pytest
import torch

from mue_bench.mue import ExitConfig, run_batch
from mue_bench.mue.config import decoder_threshold
from mue_bench.mue.encoder import StreamExit
from mue_bench.mue.search import DecodingConfig
from mue_bench.mue.similarity import group_similarity, stream_similarity
from tests.conftest import padded_batch, random_tiny


def test_stream_exit_fires_strictly_above_threshold():
    track = StreamExit(batch=3, n_layers=6, tau=0.5, fixed=None, device=torch.device("cpu"))
    track.observe(0, torch.tensor([0.4, 0.5, 0.6]))
    assert track.used.tolist() == [6, 6, 1]
    assert track.active.tolist() == [True, True, False]
    track.observe(1, torch.tensor([0.51, 0.9, 0.9]))
    assert track.used.tolist() == [2, 2, 1]  # the third had already stopped at layer 1


def test_no_check_after_the_last_layer():
    track = StreamExit(batch=1, n_layers=2, tau=0.0, fixed=None, device=torch.device("cpu"))
    track.observe(1, torch.tensor([1.0]))
    assert track.used.tolist() == [2]


def test_similarity_is_per_sample_and_ignores_padding():
    a = torch.randn(2, 4, 8)
    b = a.clone()
    b[1] = -a[1]
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert stream_similarity(a, b, mask).tolist() == pytest.approx([1.0, -1.0], abs=1e-6)
    c = a.clone()
    c[0, 3] = 100.0  # a padding position may hold anything
    mask[0, 3] = False
    assert stream_similarity(c, a, mask)[0].item() == pytest.approx(1.0, abs=1e-6)


def test_beams_of_a_sample_decide_together():
    new, old = torch.randn(4, 8), torch.randn(4, 8)
    sims = group_similarity(new, old, group=2)
    expected = torch.nn.functional.cosine_similarity(new[:2].flatten(), old[:2].flatten(), dim=0)
    assert sims.shape == (2,)
    assert sims[0].item() == pytest.approx(expected.item(), abs=1e-6)


def test_official_schedule_waits_a_third_then_decays_towards_0_9_tau():
    assert decoder_threshold(0.8, 4, 16, "official") == math.inf  # 4 < 17/3
    assert decoder_threshold(0.8, 6, 16, "official") == pytest.approx(0.9 * 0.8 + 0.1 * math.exp(-7 / 17))
    assert decoder_threshold(0.8, 0, 16, "constant") == 0.8
    assert decoder_threshold(1.2, 15, 16, "constant") == math.inf


@pytest.mark.parametrize(("max_len", "waits"), [(9, 3), (21, 7), (17, 6)])
def test_official_schedule_counts_in_the_generators_max_len(monkeypatch, max_len, waits):
    """The authors' generator runs `for step in range(max_len + 1)` with max_len = max_len_b, so their
    max_len is a DecodingConfig's minus one: 8 tokens then EOS wait 3 steps ((8 + 1) / 3), 20 wait 7 and
    16 wait 6 (17 / 3 rounded up), and the decay divides by max_len_b + 1."""
    import mue_bench.mue.decoder as decoder

    seen = []
    monkeypatch.setattr(decoder, "decoder_threshold",
                        lambda tau, step, m, schedule: seen.append(m) or decoder_threshold(tau, step, m, schedule))
    adapter = random_tiny()
    decoding = DecodingConfig(1, 2, 0, max_len=max_len, ignore_eos=True)
    [s] = run_batch(adapter, padded_batch().select([0]), ExitConfig(tau_dec=-1.0, dec_schedule="official"),
                    decoding).samples
    assert set(seen) == {max_len - 1}
    assert s.dec_layers == [adapter.n_dec_layers] * waits + [1] * (max_len - waits)


@pytest.mark.parametrize("mode", ["split", "freeze"])
def test_recorded_exits_are_the_first_layer_whose_similarity_passes(mode):
    adapter = random_tiny("split", seed=2)
    trace = run_batch(adapter, padded_batch(2), ExitConfig(encoder_mode=mode), adapter.decoding(max_len=8))
    sims = np.array([s.enc_img_sims for s in trace.samples])
    tau = float(np.median(sims))
    got = run_batch(adapter, padded_batch(2), ExitConfig(tau_img=tau, encoder_mode=mode),
                    adapter.decoding(max_len=8)).samples
    for s, g in zip(trace.samples, got):
        passing = [i + 1 for i, x in enumerate(s.enc_img_sims) if x > tau]
        # In split mode the image stream's states do not depend on τ_txt, so the trace is the same path.
        if mode == "split":
            assert g.enc_img_layers == (passing[0] if passing else 6)
        # The stored similarities explain the stored exit in any mode.
        recorded = [x for x in g.enc_img_sims if not math.isnan(x)]
        assert all(x <= tau for x in recorded[:-1])
        if g.enc_img_layers < 6:
            assert recorded[g.enc_img_layers - 1] > tau


def test_decoder_exit_layers_match_their_similarity_trace():
    adapter = random_tiny(seed=3)
    batch = padded_batch(3)
    trace = run_batch(adapter, batch, ExitConfig(), adapter.decoding(max_len=8))
    tau = float(np.nanmedian([x for s in trace.samples for st in s.dec_sims for x in st]))
    got = run_batch(adapter, batch, ExitConfig(tau_dec=tau), adapter.decoding(max_len=8)).samples
    exits = 0
    for s in got:
        for used, sims in zip(s.dec_layers, s.dec_sims):
            computed = sims[: used - 1] if used < 6 else sims
            assert all(x <= tau for x in computed[: used - 1])
            if used < 6:
                assert sims[used - 1] > tau
                exits += 1
    assert exits > 0


def test_fixed_exit_uses_exactly_the_given_layers():
    adapter = random_tiny()
    got = run_batch(adapter, padded_batch(), ExitConfig(fixed_exit=(2, 3, 4)), adapter.decoding(max_len=6))
    for s in got.samples:
        assert (s.enc_img_layers, s.enc_txt_layers) == (2, 3)
        assert set(s.dec_layers) == {4}
