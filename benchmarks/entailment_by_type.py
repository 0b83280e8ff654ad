"""Entailment accuracy of a checkpoint per hypothesis type and label on shapes, to see what it grounds.

Types follow the generator's templates: colour ("there is a red shape"), count ("there are two shapes"),
kind ("there is a circle"), spatial ("the red circle is left of the blue square"), neutral (properties
the image cannot show).

    .venv/bin/python benchmarks/entailment_by_type.py [--checkpoint mue-tiny] [--limit 600]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from mue_bench.data.registry import load_samples
from mue_bench.data.shapes import NEUTRAL_PROPERTIES
from mue_bench.models.tiny_adapter import TinyAdapter
from mue_bench.mue import ExitConfig, run_batch
from mue_bench.spec import DataSpec


def hypothesis_type(h: str) -> str:
    words = h.split()
    if "left of" in h:
        return "spatial"
    if words[-1] in NEUTRAL_PROPERTIES:
        return "neutral"
    if words[-1] == "shape" and len(words) == 5:
        return "colour"
    if words[-1] in ("shape", "shapes"):
        return "count"
    return "kind"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    adapter = TinyAdapter.load(args.checkpoint)
    samples = load_samples(DataSpec(task="entailment", split=args.split, limit=args.limit))
    correct = defaultdict(list)
    for i in range(0, len(samples), 50):
        chunk = samples[i:i + 50]
        out = run_batch(adapter, adapter.prepare(chunk), ExitConfig(encoder_mode="freeze"), adapter.decoding(max_len=4))
        for s, res in zip(chunk, out.samples):
            correct[(hypothesis_type(s.hypothesis), s.label)].append(adapter.text(res.tokens) == s.label)
    print(f"{args.checkpoint} on shapes {args.split}, n={len(samples)}")
    print(f"{'type':<10}{'label':<8}{'n':>5}{'accuracy':>10}")
    for (kind, label), hits in sorted(correct.items()):
        print(f"{kind:<10}{label:<8}{len(hits):>5}{np.mean(hits):>10.3f}")
    print(f"{'overall':<18}{len(samples):>5}{np.mean([h for v in correct.values() for h in v]):>10.3f}")


if __name__ == "__main__":
    main()
