"""MuE fine-tuning of OFA: the layer-wise label-smoothed loss falls at every decoder layer in a few steps, and
the saved folder reloads as the same model; SNLI-VE trains on the prompt it is ranked after (prev_output), with
the loss on the answer and </s> only, and with `answers` the logits there restricted to the answer trie as the
authors' criterion restricts them (criterions/label_smoothed_cross_entropy.py, their SNLI-VE constraint_mask)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mue_bench.data.ofa_tsv import load_snli_ve_tsv
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.models.ofa.inputs import teacher_forcing
from mue_bench.models.ofa.tokenizer import EOS, PAD
from mue_bench.mue import ExitConfig
from mue_bench.mue.engine import run_model
from mue_bench.mue.rank import run_rank
from mue_bench.run.prepare import load_samples
from mue_bench.spec import OFA_ANSWERS, Checkpoint, DataSpec
from mue_bench.training.finetune import FinetuneConfig
from mue_bench.training.loop import layer_losses, trie_allowed, trie_losses
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


def _prev_output_recipe(tmp_path, shapes_root, bpe: Path, **stage) -> tuple[Path, Path]:
    """A one-stage recipe of the authors' SNLI-VE run (add_caption, prev_output) on a TSV, from a tiny OFA; and
    the TSV."""
    _folder(tmp_path / "ofa-start", bpe)
    tsv, _ = _snli_tsv(tmp_path, shapes_root)
    recipe = tmp_path / "snli.json"
    model = {"family": "ofa", "checkpoint": "ofa-start", "add_caption": True, "prompt_type": "prev_output"}
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [{
        "model": model, "data": {"dataset": "snli-ve-tsv", "task": "entailment", "annotations": tsv.name},
        "batch_size": 4, "lr": 3e-3, "warmup": 0, "device": "cpu", "log_every": 100, **stage}]}))
    return recipe, tsv


def test_prev_output_fine_tuning_trains_the_ranked_prompt_and_reloads_to_rank_the_same(tmp_path, shapes_root,
                                                                                      bpe_dir):  # noqa: F811
    """The authors' SNLI-VE run (--add-caption --prompt-type=prev_output) on OFA's TSV: every layer's loss falls,
    the prompt's positions carry none, and the saved checkpoint ranks as the trained model does."""
    recipe, tsv = _prev_output_recipe(tmp_path, shapes_root, bpe_dir, steps=25)
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


# --- the answer trie in the loss (`answers`) ------------------------------------------------------------------

def _snli_states(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    """A tiny OFA with the real BPE, set up as the authors' SNLI-VE run, and its teacher-forced states."""
    adapter = OFAAdapter.load(Checkpoint("folder", str(_folder(tmp_path / "ofa", bpe_dir))))
    adapter.add_caption, adapter.prompt_type = True, "prev_output"
    samples = load_snli_ve_tsv(_snli_tsv(tmp_path, shapes_root)[0])
    batch = adapter.prepare(samples)
    labels = adapter.target_ids([s.label for s in samples], 20)
    with torch.no_grad():
        states, targets = adapter.teacher_forced(batch, labels)
    return adapter, samples, adapter.decoder_prompts(batch), labels, states, targets


def test_with_answers_the_loss_at_an_answer_position_is_cross_entropy_over_the_allowed_tokens_only(
        tmp_path, shapes_root, bpe_dir):  # noqa: F811
    """By hand: at the k-th answer position only the k-th tokens of the answers that share the target's first k
    tokens are possible (after the whole answer: </s> alone), and the loss is the cross-entropy among those;
    </s>, forced, costs 0. "token" averages over every scored position, "sample" within each sample first."""
    adapter, samples, prompts, labels, states, targets = _snli_states(tmp_path, shapes_root, bpe_dir)
    answers = tuple(adapter.answer_ids(a) for a in OFA_ANSWERS)
    assert len({s.label for s in samples}) > 1  # the rows do not all learn the same answer
    by_token, by_sample, allowed_rows = [], [], []
    for h in states:
        per_row = []
        for r, (prompt, label) in enumerate(zip(prompts, labels.tolist())):
            target = label[: label.index(EOS) + 1]
            costs = []
            for k, token in enumerate(target):
                allowed = sorted({a[k] for a in answers if a[:k] == tuple(target[:k])})
                if h is states[0]:
                    allowed_rows.append(allowed)
                scores = adapter.logprobs(h[r, len(prompt) - 1 + k])
                costs.append(torch.logsumexp(scores[allowed], 0) - scores[token])
                if token == EOS:
                    assert allowed == [EOS] and costs[-1] == 0  # forced, so free
            per_row.append(torch.stack(costs))
        by_token.append(torch.cat(per_row).mean())
        by_sample.append(torch.stack([c.mean() for c in per_row]).mean())
    got = layer_losses(adapter.logprobs, states, targets, PAD, answers=answers)
    torch.testing.assert_close(got, torch.stack(by_token))
    torch.testing.assert_close(layer_losses(adapter.logprobs, states, targets, PAD, weighting="sample",
                                            answers=answers), torch.stack(by_sample))
    # a subset's cross-entropy is below the whole vocabulary's: the trie does change the loss
    assert (got < layer_losses(adapter.logprobs, states, targets, PAD)).all()

    # the head's scores of the disallowed tokens, changed arbitrarily at each scored position (the head sees the
    # scored states only, row by row), leave the loss as it was
    vocab = adapter.model.cfg.vocab_size
    off = torch.ones(len(allowed_rows), vocab, dtype=torch.bool)
    for p, allowed in enumerate(allowed_rows):
        off[p, allowed] = False
    noise = 100 * torch.randn(len(allowed_rows), vocab) * off
    torch.testing.assert_close(layer_losses(lambda h: adapter.logprobs(h) + noise, states, targets, PAD,
                                            answers=answers), got)


def test_a_forced_eos_costs_nothing_and_smoothing_spreads_over_the_allowed_tokens_only():
    """label_smoothed_nll_loss with constraint masks (label_smoothed_cross_entropy.py:88-101): log-probs over the
    allowed tokens, eps_i = eps / (allowed - 1 + 1e-6), loss = (1 - eps - eps_i) * nll + eps_i * (minus the sum of
    the allowed tokens' log-probs). A single allowed token has log-prob 0: zero loss, smoothing or not, and no
    gradient."""
    scores = torch.tensor([[0.3, 2.0, -7.0, 0.5, -1.0, 9.0], [4.0, -2.0, 1.5, 0.0, 8.0, 3.0]], requires_grad=True)
    allowed, targets = [[1, 3, 4], [2]], torch.tensor([3, 2])
    lp = scores[0, [1, 3, 4]] - torch.logsumexp(scores[0, [1, 3, 4]], 0)  # the target is the second allowed
    nll, smooth = -lp[1], -lp.sum()
    plain = trie_losses(scores, targets, allowed)
    assert plain[1] == 0
    torch.testing.assert_close(plain[0], nll)
    eps = 0.1
    eps_i = eps / (3 - 1 + 1e-6)
    smoothed = trie_losses(scores, targets, allowed, eps)
    assert smoothed[1] == 0
    torch.testing.assert_close(smoothed[0], (1 - eps - eps_i) * nll + eps_i * smooth)
    smoothed.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all() and (scores.grad[1] == 0).all()
    assert (scores.grad[0, [0, 2, 5]] == 0).all()  # disallowed tokens get no gradient either


def test_a_target_off_the_answer_trie_is_refused():
    answers = ((7, 2), (8, 9, 2))
    targets = torch.tensor([[1, 8, 9, 2], [1, 7, 2, 1]])
    assert trie_allowed(targets, answers, pad_id=1) == [[7, 8], [9], [2], [7, 8], [2]]
    with pytest.raises(MueBenchError, match=r"a training target \[8, 2\] is not one of the answers' token sequences"):
        trie_allowed(torch.tensor([[1, 8, 2]]), answers, pad_id=1)


def test_without_answers_the_loss_is_the_whole_vocabularys_smoothed_cross_entropy():
    """No `answers` (the default): every layer's loss is the whole-vocabulary cross-entropy, smoothed as fairseq's
    label_smoothed_nll_loss (eps_i = eps / (V - 1) on every token, 1 - eps - eps_i on the target), averaged per
    token or per sample; with no smoothing exactly torch's cross-entropy."""
    torch.manual_seed(0)
    head = torch.randn(8, 50)
    states = [torch.randn(3, 7, 8) for _ in range(4)]
    targets = torch.randint(4, 50, (3, 7))
    targets[0, :3], targets[2, 5:] = PAD, PAD
    real = (targets != PAD).float()
    for eps in (0.0, 0.1):
        ce = []
        for h in states:
            lprobs = F.log_softmax(h @ head, -1)
            nll = -lprobs.gather(-1, targets[..., None]).squeeze(-1)
            ce.append((1 - eps - eps / 49) * nll + eps / 49 * -lprobs.sum(-1))
            if eps == 0.0:
                assert torch.allclose(ce[-1] * real, F.cross_entropy((h @ head).transpose(1, 2), targets,
                                                                     ignore_index=PAD, reduction="none"))
        assert torch.allclose(layer_losses(lambda h: h @ head, states, targets, PAD, label_smoothing=eps),
                              torch.stack([(c * real).sum() / real.sum() for c in ce]))
        assert torch.allclose(layer_losses(lambda h: h @ head, states, targets, PAD, weighting="sample",
                                           label_smoothing=eps),
                              torch.stack([((c * real).sum(1) / real.sum(1).clamp(min=1)).mean() for c in ce]))
    assert FinetuneConfig.model_fields["answers"].default == ()


def test_a_few_steps_with_answers_still_lower_every_layers_loss(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    recipe, _ = _prev_output_recipe(tmp_path, shapes_root, bpe_dir, steps=15, answers=list(OFA_ANSWERS),
                                    label_smoothing=0.1)
    result = run_recipe(recipe, None, log=lambda _: None)
    first, last = result["loss_per_layer_first"], result["loss_per_layer_last"]
    assert len(first) == 4 and all(b < a for a, b in zip(first, last)), (first, last)


def _answers_recipe(tmp_path, shapes_root, answers, task="entailment", family="ofa"):
    recipe = tmp_path / "answers.json"
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [{
        "model": {"family": family, "checkpoint": "random:tiny"},
        "data": {"root": str(shapes_root), "task": task}, "answers": answers}]}))
    return recipe


@pytest.mark.parametrize("answers, task, family, message", [
    (["yes", "yes"], "entailment", "ofa", r"answers: answers repeat: \['yes', 'yes'\]; list each once"),
    ([" "], "entailment", "ofa", r"answers: an answer is empty"),
    (["yes", "no"], "caption", "ofa", r"answers is a closed answer set for data.task = \"entailment\"; \"caption\" "
                                      r"targets are free text: remove answers"),
    (["yes", "no"], "entailment", "florence2", r"answers restricts OFA's entailment loss to the answer trie; "
                                               r"florence2 has none: remove answers"),
])
def test_answers_of_a_fine_tuning_config_are_checked_in_one_line(tmp_path, shapes_root, answers, task, family,
                                                                 message):
    with pytest.raises(SpecError, match=message) as e:
        expand_recipe(_answers_recipe(tmp_path, shapes_root, answers, task, family))
    assert "\n" not in str(e.value)


def test_a_label_outside_the_answers_is_refused_before_training(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    _folder(tmp_path / "ofa-start", bpe_dir)
    tsv, _ = _snli_tsv(tmp_path, shapes_root)
    missing = load_snli_ve_tsv(tsv)[0].label
    recipe = tmp_path / "snli.json"
    recipe.write_text(json.dumps({"trainer": "finetune", "stages": [{
        "model": {"family": "ofa", "checkpoint": "ofa-start"},
        "data": {"dataset": "snli-ve-tsv", "task": "entailment", "annotations": tsv.name},
        "answers": [a for a in OFA_ANSWERS if a != missing], "steps": 1, "device": "cpu"}]}))
    with pytest.raises(SpecError, match=rf"the data's label '{missing}' is not one of them; list it in answers"):
        run_recipe(recipe, None, log=lambda _: None)
