"""Each kv_fill strategy writes exactly the cache slots DESIGN.md §1 says it should."""

import pytest
import torch

from mue_bench.mue import ExitConfig, run_batch
from mue_bench.mue.cache import TensorKVCache
from mue_bench.mue.decoder import MuEStepper
from tests.conftest import padded_batch, random_tiny

L = 6


def _stepper(fill: str, ran: int) -> tuple[MuEStepper, TensorKVCache, dict]:
    """A stepper over two rows whose cache holds one past step, plus this step's slots for the first
    `ran` layers, every value distinct so copies can be traced."""
    adapter = random_tiny()
    stepper = MuEStepper(adapter, torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool),
                         ExitConfig(kv_fill=fill), beams=1, max_len=8)
    cache = stepper.cache
    for layer in range(L):
        cache.append(layer, torch.full((2, 2, 1, 16), 100.0 + layer), torch.full((2, 2, 1, 16), 200.0 + layer))
    for layer in range(ran):
        cache.append(layer, torch.full((2, 2, 1, 16), 10.0 + layer), torch.full((2, 2, 1, 16), 20.0 + layer))
    before = {"cross": [tuple(t.clone() for t in cache.cross(layer)) for layer in range(L)]}
    return stepper, cache, before


@pytest.mark.parametrize("ran", [2, L])
def test_copy_writes_the_exit_layers_slot_into_skipped_layers_only(ran):
    stepper, cache, _ = _stepper("copy", ran)
    used = torch.tensor([2, L])  # row 0 exits after layer 2, row 1 runs all (when ran == L)
    if ran == 2:
        used = torch.tensor([2, 2])
    stepper._fill(used, torch.randn(2, 32), ran)
    for layer in range(L):
        assert cache.length(layer) == 2
        k, v = cache.slot(layer)
        if layer >= 2:
            assert torch.all(k[0] == 11.0) and torch.all(v[0] == 21.0)  # layer index 1 = "layer 2"
        else:
            assert torch.all(k[0] == 10.0 + layer)
        if ran == L:
            assert torch.all(k[1] == 10.0 + layer)  # the row that ran keeps its own K/V
        assert torch.all(cache.keys[layer][:, :, 0] == 100.0 + layer)  # history untouched


def test_propagate_projects_the_exited_state_with_each_skipped_layers_weights():
    stepper, cache, _ = _stepper("propagate", ran=2)
    h = torch.randn(2, 32)
    stepper._fill(torch.tensor([2, 2]), h, ran=2)
    for layer in range(2, L):
        k, v = cache.slot(layer)
        ek, ev = stepper.adapter.propagate_kv(layer, h)
        assert torch.allclose(k, ek) and torch.allclose(v, ev)
    assert torch.all(cache.slot(0)[0] == 10.0)


def test_official_replaces_whole_self_and_cross_buffers_of_skipped_layers_for_exited_rows():
    stepper, cache, before = _stepper("official", ran=L)
    stepper._fill(torch.tensor([3, L]), torch.randn(2, 32), L)
    for layer in range(L):
        src = 2 if layer >= 3 else layer
        assert torch.all(cache.keys[layer][0, :, 0] == 100.0 + src)  # history replaced too
        assert torch.all(cache.keys[layer][0, :, 1] == 10.0 + src)
        assert torch.equal(cache.cross(layer)[0][0], before["cross"][src][0][0])
        assert torch.all(cache.keys[layer][1, :, 1] == 10.0 + layer)  # row 1 ran everything
        assert torch.equal(cache.cross(layer)[0][1], before["cross"][layer][0][1])


@pytest.mark.parametrize("fill", ["copy", "propagate", "official"])
def test_every_layer_has_a_slot_for_every_step_after_generation(fill):
    adapter = random_tiny(seed=4)
    batch = padded_batch(4)
    captured = {}
    original = adapter.decoder_cache

    def keep(enc_out):
        captured["cache"] = original(enc_out)
        return captured["cache"]

    adapter.decoder_cache = keep
    result = run_batch(adapter, batch, ExitConfig(tau_dec=-1.0, kv_fill=fill), adapter.decoding(max_len=7))
    steps = max(len(s.dec_layers) for s in result.samples)
    assert {captured["cache"].length(layer) for layer in range(L)} == {steps}
    assert all(set(s.dec_layers) == {1} for s in result.samples)  # τ = -1 exits after the first layer


@pytest.mark.parametrize("fill, projected", [("copy", {0}), ("propagate", {0}), ("official", set(range(L)))])
def test_cross_attention_is_projected_only_for_layers_a_token_reaches_or_official_overwrites(fill, projected):
    adapter = random_tiny(seed=2)
    seen: set[int] = set()
    original = adapter.decoder_cache

    def watched(enc_out):
        cache = original(enc_out)
        project = cache._cross_kv
        cache._cross_kv = lambda layer: seen.add(layer) or project(layer)
        return cache

    adapter.decoder_cache = watched
    run_batch(adapter, padded_batch(), ExitConfig(fixed_exit=(2, 3, 1), kv_fill=fill), adapter.decoding(max_len=5))
    assert seen == projected  # exit after decoder layer 1: `official` copies its buffers into layers 2-6
