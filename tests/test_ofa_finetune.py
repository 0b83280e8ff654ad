"""MuE fine-tuning of OFA: the layer-wise label-smoothed loss falls at every decoder layer in a few steps, and
the saved folder reloads as the same model; SNLI-VE trains on the prompt it is ranked after (prev_output), with
the loss on the answer and </s> only."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from mue_bench.data.ofa_tsv import load_snli_ve_tsv
from mue_bench.errors import SpecError
from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.models.ofa.inputs import teacher_forcing
from mue_bench.models.ofa.tokenizer import EOS, PAD
from mue_bench.mue import ExitConfig
from mue_bench.mue.engine import run_model
from mue_bench.mue.rank import run_rank
from mue_bench.run.prepare import load_samples
from mue_bench.spec import OFA_ANSWERS, Checkpoint, DataSpec
from mue_bench.training.loop import layer_losses
from mue_bench.training.recipe import expand_recipe, run_recipe
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_sweep import _folder
from tests.test_ofa_tsv import _snli_tsv


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


def test_teacher_forcing_puts_the_loss_on_the_answer_and_eos_only():
    """snli_ve_dataset.py: prev_output_item = src[:-1] + tgt, target = prev_output_item[1:] + </s> with
    target[:-len(tgt) - 1] = <pad>; caption_dataset.py's <s> prompt is the same rule with a one-token prompt."""
    dec_in, targets = teacher_forcing([[0, 5, 6, 7], [0]], [[9], [11, 12]])
    assert dec_in.tolist() == [[0, 5, 6, 7, 9], [0, 11, 12, PAD, PAD]]
    assert targets.tolist() == [[PAD, PAD, PAD, 9, EOS], [11, 12, EOS, PAD, PAD]]


def test_prev_output_fine_tuning_trains_the_ranked_prompt_and_reloads_to_rank_the_same(tmp_path, shapes_root,
                                                                                      bpe_dir):  # noqa: F811
    """The authors' SNLI-VE run (--add-caption --prompt-type=prev_output) on OFA's TSV: every layer's loss falls,
    the prompt's positions carry none, and the saved checkpoint ranks as the trained model does."""
    _folder(tmp_path / "ofa-start", bpe_dir)
    tsv, _ = _snli_tsv(tmp_path, shapes_root)
    recipe = tmp_path / "snli.json"
    model = {"family": "ofa", "checkpoint": "ofa-start", "add_caption": True, "prompt_type": "prev_output"}
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [{
        "model": model, "data": {"dataset": "snli-ve-tsv", "task": "entailment", "annotations": tsv.name},
        "steps": 25, "batch_size": 4, "lr": 3e-3, "warmup": 0, "device": "cpu", "log_every": 100}]}))
    out = tmp_path / "ofa-snli-mue"
    result = run_recipe(recipe, out, log=lambda _: None)
    first, last = result["loss_per_layer_first"], result["loss_per_layer_last"]
    assert len(first) == 4 and all(b < a for a, b in zip(first, last)), (first, last)

    trained = result["adapter"]
    samples = load_snli_ve_tsv(tsv)
    batch = trained.prepare(samples)
    labels = trained.target_ids([s.label for s in samples], 20)
    with torch.no_grad():
        states, targets = trained.teacher_forced(batch, labels)
    prompts = trained.decoder_prompts(batch)
    for row, prompt, label in zip(targets.tolist(), prompts, labels.tolist()):
        answer = label[: label.index(trained.eos_id) + 1]
        n = len(prompt) - 1
        assert len(prompt) > 10 and row[:n] == [PAD] * n and row[n:n + len(answer)] == answer  # prev_output: long
    # the loss cannot see the prompt's positions: any change of the head's output there leaves it as it was
    scored = torch.zeros(targets.shape, dtype=torch.bool)
    for r, prompt in enumerate(prompts):
        scored[r, len(prompt) - 1:] = True
    noisy = lambda h: trained.logprobs(h) + torch.randn(*h.shape[:2], trained.model.cfg.vocab_size) * ~scored[..., None]  # noqa: E731
    torch.testing.assert_close(layer_losses(noisy, states, targets, PAD), layer_losses(trained.logprobs, states,
                                                                                       targets, PAD))

    reloaded = OFAAdapter.load(Checkpoint("folder", str(out)))
    for a in (trained, reloaded):
        a.add_caption, a.prompt_type = True, "prev_output"
    decoding = replace(reloaded.decoding(), answers=tuple(reloaded.answer_ids(x) for x in OFA_ANSWERS))
    cfg = ExitConfig(encoder_mode="split", tau_dec=0.3)
    x, y = (run_rank(a, a.prepare(samples), cfg, decoding).result for a in (trained, reloaded))
    assert x.choice == y.choice and torch.equal(x.used, y.used) and torch.allclose(x.scores, y.scores)


def test_prompt_settings_of_a_fine_tuning_recipe_are_checked(tmp_path, shapes_root):
    recipe = tmp_path / "bad.json"
    stage = {"model": {"family": "ofa", "checkpoint": "random:tiny", "prompt_type": "prev_output"},
             "data": {"root": str(shapes_root), "task": "caption"}}
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [stage]}))
    with pytest.raises(SpecError, match=r"model.prompt_type \"prev_output\" is OFA's SNLI-VE decoder prompt; it "
                                        r"needs data.task = \"entailment\""):
        expand_recipe(recipe)
