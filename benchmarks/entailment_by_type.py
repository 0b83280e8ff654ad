"""Entailment accuracy of a checkpoint per hypothesis type and label on shapes, to see what it grounds.

Types follow the generator's templates: colour ("there is a red shape"), count ("there are two shapes"),
kind ("there is a circle", version 2), colour-kind ("there is a red circle", versions 3 and 4), spatial ("the
red circle is left of the blue square"; from version 3 also the neutral ones, naming a shape the image lacks),
property (version 2's neutral: "the red circle is heavy"). `--exits` adds a column per fixed exit (image,
text, decoder layers), to see which types need depth: those are what a threshold trades away first.

    .venv/bin/python benchmarks/entailment_by_type.py [--checkpoint mue-tiny] [--limit 600] [--version 4]
        [--exits 1,1,1 3,3,3]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from mue_bench.data.loaders import Sample
from mue_bench.data.registry import load_samples
from mue_bench.data.shapes import DEFAULT_VERSION, NEUTRAL_PROPERTIES, VERSIONS
from mue_bench.models.tiny_adapter import TinyAdapter
from mue_bench.mue import ExitConfig, run_batch
from mue_bench.spec import DataSpec


def hypothesis_type(h: str) -> str:
    words = h.split()
    if "left of" in h:
        return "spatial"
    if words[-1] in NEUTRAL_PROPERTIES:
        return "property"
    if words[-1] == "shape" and len(words) == 5:
        return "colour"
    if words[-1] in ("shape", "shapes"):
        return "count"
    return "colour-kind" if len(words) == 5 else "kind"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--split", default="test")
    parser.add_argument("--version", type=int, default=DEFAULT_VERSION, choices=VERSIONS,
                        help="shapes generator version")
    parser.add_argument("--exits", nargs="*", type=exit_layers, default=[],
                        help="fixed exits to add as columns, each IMG,TXT,DEC layers (e.g. 1,1,1)")
    args = parser.parse_args()
    adapter = TinyAdapter.load(args.checkpoint)
    samples = load_samples(DataSpec(task="entailment", split=args.split, limit=args.limit,
                                        version=args.version))
    columns = {"full": None} | {"exit " + ".".join(map(str, e)): e for e in args.exits}
    correct = {name: accuracy_by_type(adapter, samples, exit_at) for name, exit_at in columns.items()}
    print(f"{args.checkpoint} on shapes v{args.version} {args.split}, n={len(samples)}; accuracy")
    print(f"{'type':<13}{'label':<15}{'n':>5}" + "".join(f"{name:>11}" for name in columns))
    for key in sorted(correct["full"]):
        print(f"{key[0]:<13}{key[1]:<15}{len(correct['full'][key]):>5}"
              + "".join(f"{np.mean(c[key]):>11.3f}" for c in correct.values()))
    print(f"{'overall':<28}{len(samples):>5}"
          + "".join(f"{np.mean([h for v in c.values() for h in v]):>11.3f}" for c in correct.values()))


def exit_layers(text: str) -> tuple[int, int, int]:
    img, txt, dec = (int(x) for x in text.split(","))
    return img, txt, dec


def accuracy_by_type(adapter: TinyAdapter, samples: list[Sample], exit_at: tuple[int, int, int] | None,
                     ) -> dict[tuple[str, str], list[bool]]:
    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=exit_at)
    correct = defaultdict(list)
    for i in range(0, len(samples), 50):
        chunk = samples[i:i + 50]
        out = run_batch(adapter, adapter.prepare(chunk), cfg, adapter.decoding(max_len=4))
        for s, res in zip(chunk, out.samples):
            correct[(hypothesis_type(s.hypothesis), s.label)].append(adapter.text(res.tokens) == s.label)
    return correct


if __name__ == "__main__":
    main()
