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
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mue_bench.scoring import meteor_table

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


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to kill it when its parent dies (a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _memo_meteor_class():
    from pycocoevalcap.meteor import meteor
    from pycocoevalcap.meteor.meteor import METEOR_JAR, Meteor

    class MemoMeteor(Meteor):
        """pycocoevalcap's METEOR with each segment's alignment statistics memoised. Grid points share most
        of their predictions, and a segment's statistics depend only on (hypothesis, references), so the
        corpus scores are exactly the library's; the Java process aligns each distinct pair once."""

        def __init__(self, paraphrases: Path | None = None) -> None:
            # The library's own command (with `-a`, another paraphrase table), started here rather than by the
            # library so that the Java child dies with this process, even when this one is killed outright.
            self.meteor_cmd = ["java", "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
            if paraphrases is not None:
                self.meteor_cmd += ["-a", str(paraphrases)]
            self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=Path(meteor.__file__).parent,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             preexec_fn=_die_with_parent)
            self.lock = threading.Lock()
            self.stats: dict[tuple[str, tuple[str, ...]], str] = {}

        def _stat(self, hypothesis_str: str, reference_list: list[str]) -> str:
            key = (hypothesis_str, tuple(reference_list))
            if key not in self.stats:
                self.stats[key] = super()._stat(hypothesis_str, reference_list)
            return self.stats[key]

        def close(self) -> None:
            # Never wait for the lock: a call that failed inside the library (its Java child died, or Ctrl-C
            # landed) still holds it. Killing the child also ends a worker thread blocked on its output.
            self.meteor_p.kill()
            with contextlib.suppress(OSError):
                self.meteor_p.stdin.close()
            self.meteor_p.wait(timeout=10)

        def __del__(self) -> None:  # the library's waits for the lock, for ever if a failed call holds it
            with contextlib.suppress(Exception):
                self.close()

    return MemoMeteor


@contextlib.contextmanager
def meteor_process(enabled: bool = True, paraphrases: Path | None = None) -> Iterator[Any]:
    """A METEOR scorer (None when disabled). `paraphrases`: a table to load instead of the full one, such
    as `meteor_table.table_for(references)`, which gives the same scores and loads in a second, not ~9 s."""
    scorer = _memo_meteor_class()(paraphrases) if enabled else None
    try:
        yield scorer
    finally:
        if scorer is not None:
            with contextlib.suppress(Exception):
                scorer.close()


def score_tokenized(gts: Tokens, res_by_point: Mapping[str, Tokens], meteor: Any = None,
                    ) -> dict[str, dict[str, float | np.ndarray]]:
    """{point: {metric: corpus score, metric + "_per_sample": [n]}}; METEOR from `meteor_process()` if given,
    or from a function that starts one, which is then called in the worker thread (starting METEOR
    overlaps the other metrics).

    Corpus scores are pycocoevalcap's own (CIDEr-D is the mean of its per-sample scores; BLEU-4 and
    METEOR aggregate n-gram / alignment statistics, so they are recomputed from the stored predictions).
    METEOR runs in a worker thread (its work happens in the Java process) while CIDEr-D, BLEU-4 and
    ROUGE-L are computed here.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    def per_metric(name: str, scorer: Any, res: Tokens, index: int | None = None) -> dict[str, float | np.ndarray]:
        corpus, per_sample = scorer.compute_score(gts, res)
        if index is not None:
            corpus, per_sample = corpus[index], per_sample[index]
        return {name: float(corpus), name + "_per_sample": np.asarray(per_sample, float)}

    worker = _MeteorWorker(meteor, lambda scorer: {point: per_metric("meteor", scorer, res)
                                                   for point, res in res_by_point.items()})
    try:
        out: dict[str, dict[str, float | np.ndarray]] = {}
        for point, res in res_by_point.items():
            with _quiet():
                out[point] = {**per_metric("cider", Cider(), res), **per_metric("bleu4", Bleu(4), res, 3),
                              **per_metric("rouge_l", Rouge(), res)}
        for point, scores in worker.result().items():
            out[point].update(scores)
    except BaseException:
        worker.abandon()  # Ctrl-C or a failure: end the Java child now rather than wait for its work
        raise
    return out


class _MeteorWorker:
    """METEOR scoring in a daemon thread, so that an interrupt never waits for it: `abandon` kills its Java
    process (ending the thread's blocked read) and the interpreter does not join the thread at exit."""

    def __init__(self, meteor: Any, score: Any):
        self.scorer: Any = None
        self.outcome: dict[str, Any] = {}
        if meteor is None:
            self.thread = None
            return

        def run() -> None:
            try:
                self.scorer = meteor() if callable(meteor) else meteor
                self.outcome["value"] = score(self.scorer)
            except BaseException as e:  # handed to the caller by result()
                self.outcome["error"] = e

        self.thread = threading.Thread(target=run, name="meteor", daemon=True)
        self.thread.start()

    def result(self) -> dict:
        if self.thread is None:
            return {}
        while self.thread.is_alive():
            self.thread.join(0.1)  # short waits keep the main thread responsive to Ctrl-C
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["value"]

    def abandon(self) -> None:
        if self.scorer is not None:
            with contextlib.suppress(Exception):
                self.scorer.close()


def score_grid(predictions: Mapping[str, Sequence[str]], references: Sequence[Sequence[str]], meteor: bool = True,
               ) -> tuple[Tokens, dict[str, Tokens], dict[str, dict[str, float | np.ndarray]]]:
    """Tokenize and score several points' raw predictions: (gts, {point: res}, scores as score_tokenized).
    METEOR loads the paraphrase table cut to the tokenized references' words (see `meteor_table`)."""
    gts, res = tokenize_grid(predictions, references)
    with contextlib.ExitStack() as running:
        def start_meteor() -> Any:
            table = meteor_table.table_for(s for refs in gts.values() for s in refs)
            return running.enter_context(meteor_process(True, table))

        return gts, res, score_tokenized(gts, res, start_meteor if meteor else None)


def caption_scores(predictions: Mapping[str, Sequence[str]], references: Sequence[Sequence[str]],
                   meteor: bool = True) -> dict[str, dict[str, float | np.ndarray]]:
    """Score raw predictions of several points (see score_tokenized)."""
    return score_grid(predictions, references, meteor)[2]


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
