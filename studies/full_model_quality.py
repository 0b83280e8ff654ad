"""Full-model quality of a checkpoint on the whole shapes test split, next to trivial baselines.

Caption baseline: the most frequent training caption for every image. Entailment baseline: the
majority label. Runs the sweep machinery with a no-exit grid, batched.

    .venv/bin/python studies/full_model_quality.py [--checkpoint mue-tiny] [--split test]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import SPECS, sweep_points, updated

from mue_bench.analysis.baselines import trivial_baseline
from mue_bench.run.runner import SweepOptions
from mue_bench.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    for task, path in SPECS.items():
        spec = updated(load_spec(Path(path)), name=f"full-{task}", model={"checkpoint": args.checkpoint},
                       data={"limit": None, "split": args.split},
                       grid={"tau_img": [2.0], "tau_txt": [2.0], "tau_dec": [2.0]})
        full = sweep_points(spec, SweepOptions()).iloc[0]
        desc, base = trivial_baseline(spec)
        if task == "caption":
            print(f"caption    n={full.n}: CIDEr-D {full.cider:.3f}  BLEU-4 {full.bleu4:.3f}  "
                  f"METEOR {full.meteor:.3f}  ROUGE-L {full.rouge_l:.3f}   baseline ({desc}) CIDEr-D {base:.3f}")
        else:
            print(f"entailment n={full.n}: accuracy {full.accuracy:.3f}   baseline ({desc}) {base:.3f}")


if __name__ == "__main__":
    main()
