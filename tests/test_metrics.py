"""Caption metrics and consistency through pycocoevalcap, with one tokenizer call."""

import pytest

from mue_bench.metrics import caption_agreement, caption_scores, label_agreement, tokenize_grid


def test_one_tokenization_serves_scores_and_consistency():
    refs = [["a red circle", "there is a red circle"], ["a blue square and a green triangle"]]
    preds = {"full": ["a red circle", "a blue square and a green triangle"],
             "fast": ["A red circle.", "a blue square"]}
    gts, tokens = tokenize_grid(preds, refs)
    assert tokens["fast"][0] == tokens["full"][0] == ["a red circle"]  # PTB lower-cases, drops punctuation
    agree = caption_agreement(tokens, tokens["full"])
    assert agree["full"].tolist() == [1.0, 1.0]
    assert agree["fast"][0] == 1.0 and 0 < agree["fast"][1] < 1
    scores = caption_scores(preds, refs, meteor=False)
    assert scores["full"]["cider"] > scores["fast"]["cider"] > 0
    assert scores["full"]["cider"] == pytest.approx(scores["full"]["cider_per_sample"].mean())


def test_label_agreement_is_exact_match():
    assert label_agreement({"p": ["yes", "no", "maybe"]}, ["yes", "yes", "maybe"])["p"].tolist() == [1.0, 0.0, 1.0]
