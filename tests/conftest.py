"""Shared fixtures: tiny random models (initialised so that outputs vary and exits happen), a tiny
shapes benchmark, and a tiny random checkpoint on disk for sweep and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mue_bench.data import shapes
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.models.tiny.inputs import TinyBatch, pad
from mue_bench.models.tiny.model import TinyConfig, TinyOFA
from mue_bench.models.tiny.tokenizer import SPECIALS, WordTokenizer
from mue_bench.training.tiny import training_samples

TINY_SIZES = {"train": 24, "val": 8, "test": 8}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep what the library caches (METEOR's cut paraphrase tables) out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUE_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def randomise(model: TinyOFA, std: float = 0.5) -> TinyOFA:
    """Wide random weights and identity norms: with the tied head, default init just repeats the
    input token, which would make exactness tests pass vacuously."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0, std)
    return model


def random_tiny(encoder_attention: str = "split", seed: int = 0, vocab: int = 40, **config) -> TinyAdapter:
    """A small random mue-tiny whose generations vary from token to token and sample to sample; `config`
    sets further TinyConfig fields (a stem, image positions)."""
    torch.manual_seed(seed)
    tok = WordTokenizer(list(SPECIALS) + [f"w{i}" for i in range(vocab)])
    model = TinyOFA(TinyConfig(vocab_size=len(tok), d_model=32, n_heads=2, d_ff=64,
                               encoder_attention=encoder_attention, **config))
    return TinyAdapter(randomise(model), tok)


def padded_batch(seed: int = 0) -> TinyBatch:
    """Three samples with prompts of different lengths (so the batch is right-padded)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 48, 48, generator=g)
    ids, mask = pad([[5, 6, 7, 8, 9, 2], [10, 11, 2], [12, 13, 14, 2]], 0)
    return TinyBatch(images, ids, mask)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    return shapes.generate(tmp_path_factory.mktemp("data") / "shapes", seed=0, sizes=TINY_SIZES)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, shapes_root) -> Path:
    """A random mue-tiny checkpoint whose tokenizer covers the shapes vocabulary of every generator version
    (version 2's neutral properties included), so the random model does not change with the default one."""
    from mue_bench.models.tiny.inputs import prompt

    samples = training_samples(shapes_root, "train")
    tok = WordTokenizer.build([prompt(s) for s in samples] + [r for s in samples for r in s.references]
                              + ["yes no maybe", " ".join(shapes.NEUTRAL_PROPERTIES)])
    torch.manual_seed(0)
    model = randomise(TinyOFA(TinyConfig(vocab_size=len(tok), d_model=32, n_heads=2, d_ff=64)))
    out = tmp_path_factory.mktemp("ckpt") / "random-tiny"
    model.save(out)
    tok.save(out / "tokenizer.json")
    return out


class RowCounter:
    """Counts the rows that the engine's layer calls compute, around an adapter's own methods (only the
    outermost call counts: mue-tiny's decoder_layer_rows calls its decoder_layer)."""

    METHODS = ("encoder_layer", "encoder_layer_rows", "decoder_layer", "decoder_layer_rows")

    def __init__(self, adapter):
        self.rows, self.adapter, self._depth = 0, adapter, 0
        self._wrapped = [name for name in self.METHODS if hasattr(adapter, name)]
        for name in self._wrapped:
            setattr(adapter, name, self._counting(getattr(adapter, name)))

    def _counting(self, method):
        def call(layer, h, *args, **kwargs):
            if self._depth == 0:
                self.rows += h.shape[0]
            self._depth += 1
            try:
                return method(layer, h, *args, **kwargs)
            finally:
                self._depth -= 1
        return call

    def restore(self) -> None:
        for name in self._wrapped:
            delattr(self.adapter, name)  # the class's methods again
