"""Quality metrics (DESIGN.md §2): CIDEr-D, BLEU-4, METEOR, ROUGE-L via pycocoevalcap, or accuracy.

Caption scoring is batched over the whole grid: pycocoevalcap's PTB tokenizer and METEOR each start a
Java process, so every prediction of every grid point is tokenized in one call and one METEOR process
serves all points. Per-sample scores are returned too, so aggregates can be recomputed from the
per-sample file and bootstrapped.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

CAPTION_METRICS = ("cider", "bleu4", "meteor", "rouge_l")


@contextlib.contextmanager
def _quiet():
    """pycocoevalcap prints progress to stdout and its Java processes to stderr; keep the CLI's output
    ours. The file descriptors are redirected too, since the Java child inherits them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tokenize(texts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """PTB-tokenize {key: [sentence, ...]} in one Java call."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with _quiet():
        return PTBTokenizer().tokenize({k: [{"caption": s or "."} for s in v] for k, v in texts.items()})


Tokens = dict[int, list[str]]  # sample index -> PTB-tokenized sentences


def tokenize_grid(predictions: Mapping[str, Sequence[str]], references: Sequence[Sequence[str]],
                  ) -> tuple[Tokens, dict[str, Tokens]]:
    """References and every point's predictions, tokenized in one Java call: (gts, {point: res})."""
    n = len(references)
    texts: dict[str, Sequence[str]] = {f"ref{i}": refs for i, refs in enumerate(references)}
    for point, preds in predictions.items():
        assert len(preds) == n, f"{point}: {len(preds)} predictions for {n} references"
        texts.update({f"{point}\x00{i}": [p] for i, p in enumerate(preds)})
    tokens = tokenize(texts)
    gts = {i: tokens[f"ref{i}"] for i in range(n)}
    return gts, {point: {i: tokens[f"{point}\x00{i}"] for i in range(n)} for point in predictions}


def score_tokenized(gts: Tokens, res_by_point: Mapping[str, Tokens], meteor: bool = True,
                    ) -> dict[str, dict[str, float | np.ndarray]]:
    """{point: {metric: corpus score, metric + "_per_sample": [n]}}; one METEOR process for all points.

    Corpus scores are pycocoevalcap's own (CIDEr-D is the mean of its per-sample scores; BLEU-4 and
    METEOR aggregate n-gram / alignment statistics, so they are recomputed from the stored predictions).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    scorer_meteor = Meteor() if meteor else None
    out: dict[str, dict[str, float | np.ndarray]] = {}
    try:
        for point, res in res_by_point.items():
            with _quiet():
                scorers = [("cider", Cider(), None), ("bleu4", Bleu(4), 3), ("rouge_l", Rouge(), None)]
                if scorer_meteor is not None:
                    scorers.append(("meteor", scorer_meteor, None))
                scores: dict[str, float | np.ndarray] = {}
                for name, scorer, index in scorers:
                    corpus, per_sample = scorer.compute_score(gts, res)
                    if index is not None:
                        corpus, per_sample = corpus[index], per_sample[index]
                    scores[name] = float(corpus)
                    scores[name + "_per_sample"] = np.asarray(per_sample, float)
            out[point] = scores
    finally:
        if scorer_meteor is not None:
            with contextlib.suppress(Exception):
                scorer_meteor.close()
    return out


def caption_scores(predictions: Mapping[str, Sequence[str]], references: Sequence[Sequence[str]],
                   meteor: bool = True) -> dict[str, dict[str, float | np.ndarray]]:
    """Score raw predictions of several points (see score_tokenized)."""
    gts, res = tokenize_grid(predictions, references)
    return score_tokenized(gts, res, meteor)


def caption_agreement(res_by_point: Mapping[str, Tokens], full: Tokens) -> dict[str, np.ndarray]:
    """Per-sample agreement of tokenized captions with the full model's, in [0, 1] (DESIGN.md §2
    `consistency`): 1 for identical token sequences, else ROUGE-L F between the two captions."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    return {point: np.array([1.0 if res[i] == full[i] else rouge.calc_score(res[i], full[i]) for i in sorted(res)])
            for point, res in res_by_point.items()}


def label_agreement(predictions: Mapping[str, Sequence[str]], full: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-sample exact match with the full model's label."""
    return {p: np.array([float(a == b) for a, b in zip(preds, full)]) for p, preds in predictions.items()}


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    return np.array([float(p.strip() == y) for p, y in zip(predictions, labels)])
