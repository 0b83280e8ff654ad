"""Entailment accuracy of a checkpoint per hypothesis type and label on shapes, to see what it grounds.

Types follow the generator's templates: colour ("there is a red shape"), count ("there are two shapes"),
kind ("there is a circle", version 2), colour-kind ("there is a red circle", versions 3 and 4), spatial ("the
red circle is left of the blue square"; from version 3 also the neutral ones, naming a shape the image lacks),
property (version 2's neutral: "the red circle is heavy"). `--exits` adds a column per fixed exit (image,
text, decoder layers), to see which types need depth: those are what a threshold trades away first.
`--by-gap` adds true and false relations by how far apart (px) the centres of the two shapes they name are.

    .venv/bin/python studies/entailment_by_type.py [--checkpoint mue-tiny] [--limit 600] [--version 4]
        [--exits 1,1,1 3,3,3] [--by-gap]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from _common import in_batches

from mue_bench.data.loaders import Sample
from mue_bench.data.shapes import DEFAULT_VERSION, NEUTRAL_PROPERTIES, VERSIONS, scenes
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.mue import ExitConfig
from mue_bench.run.prepare import load_samples
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


GAP_BUCKETS = (0, 4, 8, 12, 16, 20, 24)  # px between the centres of the shapes a relation names, of 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--split", default="test")
    parser.add_argument("--version", type=int, default=DEFAULT_VERSION, choices=VERSIONS,
                        help="shapes generator version")
    parser.add_argument("--exits", nargs="*", type=exit_layers, default=[],
                        help="fixed exits to add as columns, each IMG,TXT,DEC layers (e.g. 1,1,1)")
    parser.add_argument("--by-gap", action="store_true",
                        help="also true and false relations by how far apart their two shapes are")
    args = parser.parse_args()
    adapter = TinyAdapter.load(args.checkpoint)
    spec = DataSpec(task="entailment", split=args.split, limit=args.limit, version=args.version)
    samples = load_samples(spec)
    columns = {"full": None} | {"exit " + ".".join(map(str, e)): e for e in args.exits}
    correct = {name: correct_per_sample(adapter, samples, exit_at) for name, exit_at in columns.items()}
    print(f"{args.checkpoint} on shapes v{args.version} {args.split}, n={len(samples)}; accuracy")
    by_type = {s.sample_id: (hypothesis_type(s.hypothesis), s.label) for s in samples}
    print_table(("type", "label"), by_type, correct)
    print(f"{'overall':<28}{len(samples):>5}"
          + "".join(f"{np.mean(list(c.values())):>11.3f}" for c in correct.values()))
    if args.by_gap:
        print("\ntrue and false relations by the x gap (px) between their shapes' centres")
        print_table(("gap", ""), relation_gaps(samples, spec), correct)


def exit_layers(text: str) -> tuple[int, int, int]:
    img, txt, dec = (int(x) for x in text.split(","))
    return img, txt, dec


def correct_per_sample(adapter: TinyAdapter, samples: list[Sample], exit_at: tuple[int, int, int] | None,
                       ) -> dict[str, bool]:
    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=exit_at)
    return {s.sample_id: adapter.text(res.tokens) == s.label for s, res in in_batches(adapter, samples, cfg, max_len=4)}


def relation_gaps(samples: list[Sample], spec: DataSpec) -> dict[str, tuple[str, str]]:
    """The gap bucket of every true or false relation, by sample id. Positions are in no file: the scenes are
    drawn again from the benchmark's seed (images are the same in every version)."""
    x = {scene.name: {s.name: s.x for s in scene.shapes} for scene in scenes(spec.seed, version=spec.version)}
    gaps = {}
    for s in samples:
        if " is left of " in s.hypothesis and s.label != "maybe":
            first, second = s.hypothesis.removeprefix("the ").split(" is left of the ")
            gap = abs(x[s.image.stem][first] - x[s.image.stem][second])
            low = max(b for b in GAP_BUCKETS if b <= gap)
            gaps[s.sample_id] = (f"{low:>2}-{low + 3}" if low < GAP_BUCKETS[-1] else f">={low}", "")  # sorts
    return gaps


def print_table(names: tuple[str, str], groups: dict[str, tuple[str, str]], correct: dict[str, dict[str, bool]],
                ) -> None:
    """One row per group of samples (sorted), the accuracy of each column in it."""
    members = defaultdict(list)
    for sample_id, key in groups.items():
        members[key].append(sample_id)
    print(f"{names[0]:<13}{names[1]:<15}{'n':>5}" + "".join(f"{name:>11}" for name in correct))
    for key in sorted(members):
        print(f"{key[0]:<13}{key[1]:<15}{len(members[key]):>5}"
              + "".join(f"{np.mean([c[i] for i in members[key]]):>11.3f}" for c in correct.values()))


if __name__ == "__main__":
    main()
