"""Caption metrics and consistency through pycocoevalcap, with one tokenizer call."""

import pytest

from mue_bench.scoring.metrics import caption_agreement, caption_scores, label_agreement, tokenize_grid


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


def test_meteor_aligns_each_distinct_caption_once_and_scores_as_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor

    from mue_bench.scoring.metrics import meteor_process, score_tokenized

    refs = [["a red circle", "there is a red circle"], ["a blue square and a green triangle", "two shapes"]]
    preds = {"full": ["a red circle", "a blue square and a green triangle"],
             "same": ["a red circle", "a blue square and a green triangle"],
             "fast": ["a red square", "a blue square"]}
    gts, tokens = tokenize_grid(preds, refs)
    with meteor_process() as memo:  # started first: both JVMs load at once
        plain = Meteor()  # the library's own scorer, one alignment per segment and point
        try:
            expected = {point: plain.compute_score(gts, res) for point, res in tokens.items()}
        finally:
            plain.meteor_p.kill()
        scores = score_tokenized(gts, tokens, memo)
        assert len(memo.stats) == 4  # "same" repeats "full": only 4 distinct (caption, references) pairs
    for point, (corpus, per_sample) in expected.items():
        assert scores[point]["meteor"] == corpus
        assert scores[point]["meteor_per_sample"].tolist() == per_sample
    assert scores["full"]["meteor"] > scores["fast"]["meteor"] > 0
    assert {"cider", "bleu4", "rouge_l"} <= scores["fast"].keys()


def test_a_meteor_scorer_whose_java_died_mid_call_closes_at_once():
    import time

    from mue_bench.scoring.metrics import meteor_process

    with meteor_process() as scorer:
        scorer.lock.acquire()  # as the library leaves it when its Java child dies inside a call
        scorer.meteor_p.kill()
        started = time.perf_counter()
    assert time.perf_counter() - started < 5 and scorer.meteor_p.poll() is not None


def test_the_meteor_child_dies_with_its_parent(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("from mue_bench.scoring.metrics import meteor_process\n"
            "import time\n"
            "with meteor_process() as s:\n"
            "    print(s.meteor_p.pid, flush=True)\n"
            "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:  # reaped by init once dead; a zombie counts as gone
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"METEOR's Java process {child} outlived the killed sweep")
