"""How much of a sweep's wall time is spent outside model work (loading, pre-processing, scoring, writing).

Target: under 10% for the demo sweep. Every call of the engine's model work (warm-up included)
is timed by wrapping `run_model`; the rest of the sweep's wall time is overhead. `--cold` starts from an
empty cache, so METEOR's paraphrase table is cut inside the sweep, as on the first sweep of a dataset.

    .venv/bin/python benchmarks/sweep_overhead.py [SPEC] [--limit N] [--cold]
"""

from __future__ import annotations

from pathlib import Path

from _common import parser, time_parts, timed_sweep

from mue_bench.mue.engine import Engine
from mue_bench.results import SweepStore
from mue_bench.run import executor, runner
from mue_bench.spec import load_spec

# Each part of a sweep and the function that does it.
PARTS = {
    "model work (warm-up included)": (Engine, "run"),
    "loading model, data, inputs": (executor, "prepare_inputs"),
    "per-sample bookkeeping (collect)": (Engine, "collect"),
    "scoring (pycocoevalcap)": (runner, "score"),
    "writing point parts": (SweepStore, "save_point"),
    "writing final parquet": (SweepStore, "finish"),
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("spec", nargs="?", default="sweeps/demo.toml")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cold", action="store_true", help="start from an empty cache (first sweep)")
    args = p.parse_args()

    spec = load_spec(Path(args.spec))
    spent = {name: 0.0 for name in PARTS}
    with time_parts(PARTS, spent):
        outcome, total = timed_sweep(spec, runner.SweepOptions(fresh=True), limit=args.limit, cold=args.cold)
    model_time = spent["model work (warm-up included)"]

    points = outcome.points
    print(f"spec {args.spec}: {len(points)} points x {int(points['n'].max())} samples, "
          f"batch size {spec.run.batch_size}, device {points['device_name'].iloc[0]}, "
          f"{'cold' if args.cold else 'warm'} cache")
    print(f"{'sweep wall time':<34}{total:9.1f} s")
    print(f"{'model work (warm-up included)':<34}{model_time:9.1f} s")
    print(f"{'  of which timed points':<34}{points['wall_s'].sum():9.1f} s")
    print(f"{'outside model work':<34}{total - model_time:9.1f} s  ({100 * (total - model_time) / total:.1f}%)")
    for name, secs in spent.items():
        if name != "model work (warm-up included)":
            print(f"{'  ' + name:<34}{secs:9.1f} s  ({100 * secs / total:.1f}%)")
    other = total - sum(spent.values())
    print(f"{'  other (bookkeeping, progress)':<34}{other:9.1f} s  ({100 * other / total:.1f}%)")


if __name__ == "__main__":
    main()
