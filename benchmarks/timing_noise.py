"""Time savings when the machine's load changes halfway through a sweep: paired timing against the old way.

Runs the demo grid twice: on a quiet machine, then with a background CPU load (one busy-loop process per core,
each stopping by itself after `--load-seconds` at most) switched on when half of the points are done. Per point
it prints the time saving the old way (the point's own time over the full model's, timed once at the start of
the sweep) and the paired way (1 - the median ratio of back-to-back runs, with its 95% interval), in both runs,
and how many loaded paired savings keep the quiet value inside their interval. Run it on an otherwise idle
machine: the script makes the only load it measures.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import parser, updated

from mue_bench.run.runner import Progress, SweepOptions, run_sweep
from mue_bench.spec import load_spec


def _busy(deadline: float) -> None:
    x = 0
    while time.time() < deadline:
        x = (x * 1103515245 + 12345) % 2147483648


class HalfwayLoad:
    """Starts one busy process per core once `after` points are done; `stop` ends them (they end anyway)."""

    def __init__(self, after: int, seconds: float):
        self.after, self.seconds, self.done, self.procs = after, seconds, 0, []

    def point_done(self, pid: str, ok: bool, summary: object = None) -> None:
        self.done += 1
        if self.done == self.after and not self.procs:
            deadline = time.time() + self.seconds
            self.procs = [mp.Process(target=_busy, args=(deadline,), daemon=True) for _ in range(mp.cpu_count())]
            for p in self.procs:
                p.start()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.join()


def sweep(spec, out: str, progress: Progress | None = None) -> pd.DataFrame:
    spec = updated(spec, output={"dir": out})
    points = run_sweep(spec, SweepOptions(fresh=True, meteor=False), progress).points.set_index("point_id")
    full = points[points["is_full"]].iloc[0]
    points["old"] = 1 - points["wall_s"] / full["wall_s"]  # against the full model timed once, at the start
    return points[~points["is_full"]]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--spec", default="sweeps/demo.toml")
    p.add_argument("--limit", type=int, default=None, help="samples (default: the spec's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the load adds one process per core)")
    p.add_argument("--load-seconds", type=float, default=900.0, help="the load stops by itself after this")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(Path(args.spec))
    if args.limit:
        spec = updated(spec, data={"limit": args.limit})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        quiet = sweep(spec, out)
        load = HalfwayLoad(after=len(spec.points()) // 2, seconds=args.load_seconds)
        try:
            loaded = sweep(spec, out, Progress(point_done=load.point_done))
        finally:
            load.stop()
        wall = time.perf_counter() - t0
    print(f"{spec.name}: {len(quiet)} points x {int(quiet['n'].iloc[0])} samples, batch {spec.run.batch_size}, "
          f"{args.threads} torch threads, {mp.cpu_count()} load processes from point {load.after + 1} of the "
          f"second run; {wall:.0f} s in all")
    print(f"{'point':48} {'old quiet':>9} {'old load':>9} {'paired quiet':>23} {'paired load':>23}")
    inside = 0
    for pid, q in quiet.iterrows():
        r = loaded.loc[pid]
        ok = r.time_savings_lo <= q.time_savings <= r.time_savings_hi
        inside += ok
        print(f"{pid:48} {100 * q.old:8.1f}% {100 * r.old:8.1f}% "
              f"{100 * q.time_savings:7.1f}% [{100 * q.time_savings_lo:5.1f},{100 * q.time_savings_hi:5.1f}] "
              f"{100 * r.time_savings:7.1f}% [{100 * r.time_savings_lo:5.1f},{100 * r.time_savings_hi:5.1f}]"
              f"{'' if ok else '  quiet value outside'}")
    old_gap = np.abs(loaded["old"] - quiet["old"]) * 100
    new_gap = np.abs(loaded["time_savings"] - quiet["time_savings"]) * 100
    print(f"quiet paired saving inside the loaded run's interval: {inside} of {len(quiet)} points")
    print(f"|loaded - quiet|, percentage points: old median {old_gap.median():.1f}, max {old_gap.max():.1f}; "
          f"paired median {new_gap.median():.1f}, max {new_gap.max():.1f}")
    warnings = loaded["timing_warning"].dropna().unique()
    print(f"drift alarm, loaded run: {warnings[0] if len(warnings) else 'silent'}; quiet run: "
          f"{quiet['timing_warning'].dropna().unique()[0] if quiet['timing_warning'].notna().any() else 'silent'}")


if __name__ == "__main__":
    main()
