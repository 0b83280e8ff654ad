"""Does a checkpoint name the right shapes? Greedy full-model captions on shapes, checked object by object.

CIDEr-D rewards wording as much as grounding; this counts what the captions get right about the image.
Every reference lists the shapes left to right, so the first one ("a small red circle , a large blue square
and ...") is the ground truth. Per size and kind of one-shape images: how often the caption names that kind
and no other. Per shape count: how often the caption names exactly the right (colour, kind) objects, and in
the right left-to-right order.

    .venv/bin/python studies/caption_grounding.py [--checkpoint mue-tiny] [--split val] [--limit 500]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from _common import in_batches

from mue_bench.data.shapes import COLORS, SHAPES
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.mue import ExitConfig
from mue_bench.run.prepare import load_samples
from mue_bench.spec import DataSpec


def objects(caption: str) -> list[tuple[str, str]]:
    """(colour, kind) of every shape a caption names, in order: a kind word and the colour word before it."""
    words = caption.split()
    return [(words[i - 1], w) for i, w in enumerate(words) if w in SHAPES and i > 0 and words[i - 1] in COLORS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    adapter = TinyAdapter.load(args.checkpoint)
    samples = load_samples(DataSpec(task="caption", split=args.split, limit=args.limit))
    single: dict[tuple[str, str], list[bool]] = defaultdict(list)
    by_count: dict[int, list[tuple[bool, bool]]] = defaultdict(list)
    for s, res in in_batches(adapter, samples, ExitConfig(encoder_mode="freeze"), max_len=24):
        truth, said = objects(s.references[0]), objects(adapter.text(res.tokens))
        by_count[len(truth)].append((sorted(said) == sorted(truth), said == truth))
        if len(truth) == 1:
            size = s.references[0].split()[1]
            single[(size, truth[0][1])].append([k for _, k in said] == [truth[0][1]])
    print(f"{args.checkpoint} on shapes {args.split}, n={len(samples)} captions (greedy, full model)")
    print(f"{'one shape':<18}{'n':>5}{'kind right':>12}")
    for (size, kind), hits in sorted(single.items()):
        print(f"{size + ' ' + kind:<18}{len(hits):>5}{np.mean(hits):>12.3f}")
    print(f"{'shapes':<18}{'n':>5}{'objects right':>15}{'and in order':>14}")
    for count, hits in sorted(by_count.items()):
        print(f"{count:<18}{len(hits):>5}{np.mean([h[0] for h in hits]):>15.3f}{np.mean([h[1] for h in hits]):>14.3f}")


if __name__ == "__main__":
    main()
