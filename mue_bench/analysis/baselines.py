"""Trivial baselines that say what a model's quality is worth on a dataset.

Caption: the most frequent training caption, predicted for every image. Entailment: the majority label.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mue_bench.data.loaders import load_karpathy
from mue_bench.run.prepare import load_samples
from mue_bench.scoring.metrics import caption_scores
from mue_bench.spec import SweepSpec


def trivial_baseline(spec: SweepSpec) -> tuple[str, float]:
    """(description, score) on the spec's samples: CIDEr-D for captions, accuracy for entailment."""
    samples = load_samples(spec.data)
    if spec.data.task == "caption":
        root = Path(spec.data.annotations or Path(spec.data.root) / "dataset_coco.json")
        images = Path(spec.data.images or spec.data.root)
        train = load_karpathy(root, images, "train")
        common = Counter(r for s in train for r in s.references).most_common(1)[0][0]
        score = caption_scores({"c": [common] * len(samples)}, [s.references for s in samples], meteor=False)
        return f"constant caption {common!r}", float(score["c"]["cider"])
    label, count = Counter(s.label for s in samples).most_common(1)[0]
    return f"majority label {label!r}", count / len(samples)
