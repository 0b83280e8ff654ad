"""Full-model quality of a checkpoint on the whole shapes test split, next to trivial baselines.

Caption baseline: the most frequent training caption for every image. Entailment baseline: the
majority label. Runs the sweep machinery with a no-exit grid, batched.

    .venv/bin/python benchmarks/full_model_quality.py [--checkpoint mue-tiny] [--split test]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mue_bench.analysis.baselines import trivial_baseline
from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import load_spec

SPECS = {"caption": "sweeps/demo.toml", "entailment": "sweeps/demo-entailment.toml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mue-tiny")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    for task, path in SPECS.items():
        spec = load_spec(Path(path))
        with tempfile.TemporaryDirectory() as out:
            spec = spec.model_copy(update={
                "name": f"full-{task}",
                "model": spec.model.model_copy(update={"checkpoint": args.checkpoint}),
                "data": spec.data.model_copy(update={"limit": None, "split": args.split}),
                "grid": spec.grid.model_copy(update={"tau_img": [2.0], "tau_txt": [2.0], "tau_dec": [2.0]}),
                "run": spec.run.model_copy(update={"batch_size": 50}),
                "timing": spec.timing.model_copy(update={"warmup": 0}),
                "output": spec.output.model_copy(update={"dir": out})})
            full = run_sweep(spec, SweepOptions()).points.iloc[0]
        desc, base = trivial_baseline(spec)
        if task == "caption":
            print(f"caption    n={full.n}: CIDEr-D {full.cider:.3f}  BLEU-4 {full.bleu4:.3f}  "
                  f"METEOR {full.meteor:.3f}  ROUGE-L {full.rouge_l:.3f}   baseline ({desc}) CIDEr-D {base:.3f}")
        else:
            print(f"entailment n={full.n}: accuracy {full.accuracy:.3f}   baseline ({desc}) {base:.3f}")


if __name__ == "__main__":
    main()
