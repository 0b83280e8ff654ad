"""MuE fine-tuning of OFA: the layer-wise label-smoothed loss falls at every decoder layer in a few steps, and
the saved folder reloads as the same model."""

from __future__ import annotations

import json

import torch

from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.mue import ExitConfig
from mue_bench.mue.engine import run_model
from mue_bench.run.prepare import load_samples
from mue_bench.spec import Checkpoint, DataSpec
from mue_bench.training.recipe import run_recipe
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_sweep import _folder


def test_a_few_steps_lower_every_layers_loss_and_the_checkpoint_reloads(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    start = _folder(tmp_path / "ofa-start", bpe_dir)
    recipe = tmp_path / "ofa.json"
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [{
        "model": {"family": "ofa", "checkpoint": "ofa-start"},  # relative to the recipe's folder
        "data": {"dataset": "shapes", "root": str(shapes_root), "task": "caption", "split": "train", "limit": 4},
        "steps": 25, "batch_size": 4, "lr": 3e-3, "warmup": 0, "label_smoothing": 0.1, "device": "cpu",
        "log_every": 100}]}))
    out = tmp_path / "ofa-mue"
    result = run_recipe(recipe, out, log=lambda _: None)
    first, last = result["loss_per_layer_first"], result["loss_per_layer_last"]
    assert len(first) == 4 and all(b < a for a, b in zip(first, last)), (first, last)
    assert start.exists() and {"model.safetensors", "config.json", "vocab.json", "merges.txt",
                               "ofa_task.json"} <= {p.name for p in out.iterdir()}

    trained, reloaded = result["adapter"], OFAAdapter.load(Checkpoint("folder", str(out)))
    assert reloaded.image_size == trained.image_size == 64
    samples = load_samples(DataSpec(root=str(shapes_root), limit=2))
    batch = reloaded.prepare(samples)
    decoding = reloaded.decoding(max_len=6)
    a = run_model(trained, batch, ExitConfig(encoder_mode="freeze"), decoding)
    b = run_model(reloaded, batch, ExitConfig(encoder_mode="freeze"), decoding)
    assert a.tokens == b.tokens and torch.allclose(a.encoder.out, b.encoder.out)
