"""A sweep's wall time on Ray with 1 and 2 workers, their ratio, and the driver's own share of the time.

The Ray executor (mue_bench/run/ray_executor.py) spreads a sweep's units over worker actors while the driver
writes each point and scores the grid at the end. This times the same sweep in this process (local), then on a Ray
session started here with 1 and with 2 CPU workers, and splits each Ray run into: starting the workers (placement,
each loading the model and data), waiting on the workers, and the driver's own work (receiving and writing points,
scoring, the final write). On a 2-core machine no speed-up is expected (the driver and two one-thread workers
share two cores); the figure there is the overhead. On a cluster the ratio is the scaling.

    .venv/bin/python benchmarks/scaling.py [SPEC] [--limit N] [--workers 1,2]
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import ray
from _common import parser, time_parts, timed_sweep

from mue_bench.results import SweepStore
from mue_bench.run import ray_executor, runner
from mue_bench.spec import load_spec

PARTS = {
    "starting workers (place, load)": (ray_executor.RayExecutor, "start"),
    "waiting on workers": (ray, "wait"),
    "scoring (pycocoevalcap)": (runner, "score"),
    "writing point parts": (SweepStore, "save_point"),
    "writing final parquet": (SweepStore, "finish"),
}
DRIVER = ("scoring (pycocoevalcap)", "writing point parts", "writing final parquet")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("spec", nargs="?", default="sweeps/demo.toml")
    p.add_argument("--limit", type=int, default=16, help="samples (default 16: the demo grid in about a minute)")
    p.add_argument("--workers", default="1,2")
    args = p.parse_args()
    spec = load_spec(Path(args.spec))
    options = runner.SweepOptions(fresh=True, meteor=False)

    local, local_s = timed_sweep(spec, options, limit=args.limit)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    ray_start = time.perf_counter() - t0
    rows = []
    try:
        for n in map(int, args.workers.split(",")):
            spent = {name: 0.0 for name in PARTS}
            with time_parts(PARTS, spent):
                outcome, total = timed_sweep(spec, options, limit=args.limit,
                                             run={"executor": "ray", "workers": n, "cpus_per_worker": 1})
            rows.append((n, total, spent))
    finally:
        ray.shutdown()

    points = local.points
    print(f"spec {args.spec}: {len(points)} points x {int(points['n'].max())} samples, batch size "
          f"{spec.run.batch_size}, {os.cpu_count()} cores, {points['device_name'].iloc[0]}")
    print(f"{'starting the Ray session':<34}{ray_start:9.1f} s  (once, not in the times below)")
    print(f"{'local executor (this process)':<34}{local_s:9.1f} s")
    for n, total, spent in rows:
        driver = sum(spent[k] for k in DRIVER)
        other = total - sum(spent.values())
        print(f"{f'ray, {n} worker(s)':<34}{total:9.1f} s")
        for name in PARTS:
            print(f"{'  ' + name:<34}{spent[name]:9.1f} s  ({100 * spent[name] / total:.1f}%)")
        print(f"{'  other driver work':<34}{other:9.1f} s  ({100 * other / total:.1f}%)")
        print(f"{'  driver overhead (own work)':<34}{driver + other:9.1f} s  ({100 * (driver + other) / total:.1f}%)")
    if len(rows) >= 2:
        (n1, t1, _), (n2, t2, _) = rows[0], rows[1]
        print(f"{f'{n1} -> {n2} workers: wall time ratio':<34}{t2 / t1:9.2f}  (speed-up {t1 / t2:.2f}x)")


if __name__ == "__main__":
    main()
