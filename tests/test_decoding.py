"""Greedy and beam search over a scripted stepper."""

import pytest
import torch

from mue_bench.mue.search import DecodingConfig, generate

EOS, BOS, PAD = 2, 1, 0


class Scripted:
    """Log-probs depend only on the previous token, from a fixed table; counts steps and reorders."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 6):
        self.table, self.vocab, self.last, self.steps = table, vocab, None, 0

    def step(self, tokens, alive):
        self.steps += 1
        out = torch.full((len(tokens), self.vocab), -50.0)
        for r, t in enumerate(tokens.tolist()):
            for tok, p in self.table.get(t, {EOS: 0.0}).items():
                out[r, tok] = torch.tensor(p).log()
        return out

    def reorder(self, index):
        pass


def test_greedy_follows_argmax_and_stops_at_eos():
    s = Scripted({BOS: {3: 0.6, 4: 0.4}, 3: {4: 0.9, EOS: 0.1}, 4: {EOS: 1.0}})
    assert generate(s, 2, DecodingConfig(BOS, EOS, PAD, max_len=8), torch.device("cpu")) == [[3, 4, EOS]] * 2


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # greedy: 3 (0.6) then 5 (0.3) -> 0.18; beam: 4 (0.4) then EOS (1.0) -> 0.4
    table = {BOS: {3: 0.6, 4: 0.4}, 3: {5: 0.3, EOS: 0.25}, 5: {EOS: 1.0}, 4: {EOS: 1.0}}
    cfg = DecodingConfig(BOS, EOS, PAD, num_beams=2, max_len=5)
    greedy = generate(Scripted(table), 1, DecodingConfig(BOS, EOS, PAD, max_len=5), torch.device("cpu"))
    assert greedy == [[3, 5, EOS]]
    assert generate(Scripted(table), 1, cfg, torch.device("cpu")) == [[4, EOS]]


def test_no_repeat_ngram_blocks_a_repeated_bigram():
    table = {BOS: {3: 1.0}, 3: {4: 0.9, 5: 0.1}, 4: {3: 0.9, EOS: 0.1}, 5: {EOS: 1.0}}
    cfg = DecodingConfig(BOS, EOS, PAD, max_len=8, no_repeat_ngram=2)
    # 3 4 3 then "3 4" again is banned, so 5 follows
    assert generate(Scripted(table), 1, cfg, torch.device("cpu")) == [[3, 4, 3, 5, EOS]]


def test_max_len_cuts_generation():
    table = {BOS: {3: 1.0}, 3: {3: 1.0}}
    assert generate(Scripted(table), 1, DecodingConfig(BOS, EOS, PAD, max_len=4), torch.device("cpu")) == [[3] * 4]


def test_answers_restrict_the_search_to_the_answer_trie():
    # Unconstrained, greedy would say 5; the answers are [3, EOS] and [4, 3, EOS].
    table = {BOS: {5: 0.5, 4: 0.3, 3: 0.2}, 4: {5: 0.9, 3: 0.1}, 3: {5: 0.8, EOS: 0.2}}
    answers = ((3, EOS), (4, 3, EOS))
    for beams in (1, 2):
        cfg = DecodingConfig(BOS, EOS, PAD, num_beams=beams, max_len=6, answers=answers)
        (out,) = generate(Scripted(table), 1, cfg, torch.device("cpu"))
        assert tuple(out) in answers
    greedy = DecodingConfig(BOS, EOS, PAD, max_len=6, answers=answers)
    assert generate(Scripted(table), 1, greedy, torch.device("cpu")) == [[4, 3, EOS]]


def test_answer_constraint_renormalises_over_the_allowed_tokens():
    from mue_bench.mue.search import _keep_answers

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    lp = logits.log_softmax(-1)
    _keep_answers(lp, [[BOS]], ((1,), (3,)), [0])
    # OFA masks the logits, then takes the softmax: the same numbers.
    expected = logits.masked_fill(torch.tensor([[True, False, True, False]]), float("-inf")).log_softmax(-1)
    assert torch.allclose(lp, expected)
    assert lp[0, [1, 3]].exp().sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("step", range(6))
def test_generation_config_constraints_match_transformers_processors(step):
    """Forced BOS/EOS, the minimum length and the n-gram ban change log-probs as transformers' processors do,
    in generate()'s order, with its length counting (the decoder input holds the start token)."""
    from transformers.generation.logits_process import (
        ForcedBOSTokenLogitsProcessor,
        ForcedEOSTokenLogitsProcessor,
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
    )

    from mue_bench.mue.search import _constrain

    cfg = DecodingConfig(BOS, EOS, PAD, max_len=6, no_repeat_ngram=2, min_new_tokens=3, forced_bos=4,
                         forced_eos=(EOS, 5), extra_eos=(5,))
    g = torch.Generator().manual_seed(step)
    seqs = [[BOS] + torch.randint(3, 5, (step,), generator=g).tolist() for _ in range(3)]
    logprobs = torch.randn(3, 8, generator=g).log_softmax(-1)
    theirs = LogitsProcessorList([
        NoRepeatNGramLogitsProcessor(2), MinLengthLogitsProcessor(3 + 1, [EOS, 5]), ForcedBOSTokenLogitsProcessor(4),
        ForcedEOSTokenLogitsProcessor(6 + 1, [EOS, 5])])(torch.tensor(seqs), logprobs.clone())
    ours = logprobs.clone()
    _constrain(ours, seqs, cfg, [0, 1, 2], step)
    assert torch.equal(ours, theirs)
