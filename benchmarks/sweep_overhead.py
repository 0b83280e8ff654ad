"""How much of a sweep's wall time is spent outside model work (loading, pre-processing, scoring, writing).

Target (issue 3): under 10% for the demo sweep. Every call of the engine's model work (warm-up included)
is timed by wrapping `run_model`; the rest of the sweep's wall time is overhead.

    .venv/bin/python benchmarks/sweep_overhead.py [SPEC] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mue_bench import runner
from mue_bench.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="sweeps/demo.toml")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    spec = load_spec(Path(args.spec))
    with tempfile.TemporaryDirectory() as out:
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"dir": out})})
        if args.limit:
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"limit": args.limit})})
        model_time = 0.0
        inner = runner.run_model

        def timed_run_model(*a, **kw):
            nonlocal model_time
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                model_time += time.perf_counter() - t0

        runner.run_model = timed_run_model
        t0 = time.perf_counter()
        outcome = runner.run_sweep(spec, runner.SweepOptions(fresh=True))
        total = time.perf_counter() - t0
        runner.run_model = inner

    points = outcome.points
    print(f"spec {args.spec}: {len(points)} points x {int(points['n'].max())} samples, "
          f"batch size {spec.run.batch_size}, device {points['device_name'].iloc[0]}")
    print(f"{'sweep wall time':<34}{total:9.1f} s")
    print(f"{'model work (warm-up included)':<34}{model_time:9.1f} s")
    print(f"{'  of which timed points':<34}{points['wall_s'].sum():9.1f} s")
    print(f"{'outside model work':<34}{total - model_time:9.1f} s  ({100 * (total - model_time) / total:.1f}%)")


if __name__ == "__main__":
    main()
