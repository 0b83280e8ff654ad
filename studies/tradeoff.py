"""The quality/savings trade-off of trained checkpoints on shapes: how much depth each one can give up.

For each checkpoint and task it runs the task's demo grid and prints the full model's quality next to a
trivial baseline, the largest layer saving at ≥ 99% / ≥ 96% of full quality, the quality of the most
aggressive point, the best quality reachable at fixed savings (to compare training losses), and the quality
of one layer per stream (`fixed_exit` (1, 1, 1): the floor any threshold can reach).

    .venv/bin/python studies/tradeoff.py --checkpoints mue-tiny mue-tiny-finalloss --limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from _common import SPECS, sweep_points, updated

from mue_bench.analysis.baselines import trivial_baseline
from mue_bench.analysis.pick import pick
from mue_bench.run.runner import SweepOptions
from mue_bench.spec import load_spec


def best_quality_at(points: pd.DataFrame, saving: float) -> float:
    ok = points[(points["status"] == "ok") & (points["layer_savings"] >= saving)]
    return float(ok["quality_rel"].max()) if len(ok) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", default=["mue-tiny"])
    parser.add_argument("--tasks", nargs="+", default=list(SPECS))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--savings", nargs="+", type=float, default=[0.3, 0.4, 0.5])
    args = parser.parse_args()

    for task in args.tasks:
        base_spec = updated(load_spec(Path(SPECS[task])), data={"limit": args.limit})
        desc, base = trivial_baseline(base_spec)
        print(f"\n== {task} ({SPECS[task]}, n={args.limit}); trivial baseline, {desc}: {base:.3f}")
        header = (f"{'checkpoint':<22}{'full':>8}{'sav@99%':>9}{'sav@96%':>9}{'most aggr.':>11}"
                  + "".join(f"{'q@' + format(s, '.0%'):>9}" for s in args.savings) + f"{'1 layer':>9}")
        print(header)
        for ckpt in args.checkpoints:
            spec = updated(base_spec, name=f"tradeoff-{task}", model={"checkpoint": ckpt},
                           grid={"fixed_exit": [(1, 1, 1)]})
            swept = sweep_points(spec, SweepOptions(meteor=False))
            one_layer = swept[swept["fixed_exit"].notna()].iloc[0]
            points = swept[swept["fixed_exit"].isna()]  # thresholds only: what a user can pick
            full = points[points["is_full"]].iloc[0]
            p99, p96 = pick(points, 0.99), pick(points, 0.96)
            aggressive = points.sort_values("layer_savings").iloc[-1]
            row = (f"{Path(ckpt).name:<22}{full.quality:8.3f}"
                   f"{(p99.layer_savings if p99 is not None else float('nan')):9.1%}"
                   f"{(p96.layer_savings if p96 is not None else float('nan')):9.1%}"
                   f"{aggressive.quality_rel:11.1%}"
                   + "".join(f"{best_quality_at(points, s):9.1%}" for s in args.savings)
                   + f"{one_layer.quality_rel:9.1%}")
            print(row)
            for label, p in (("99%", p99), ("96%", p96)):
                if p is not None:
                    print(f"{'':<22}best within {label}: {p.point_id} (quality_rel {p.quality_rel:.1%}, "
                          f"layer {p.layer_savings:.1%}, FLOP {p.flop_savings:.1%})")
            print(f"{'':<22}most aggressive: {aggressive.point_id} (layer {aggressive.layer_savings:.1%})")


if __name__ == "__main__":
    main()
