"""What a 5x5x5 threshold grid costs: layer executions and wall time of the sweep, against the naive
cost (125 full-model evaluations) and against one full-model pass.

Targets (issue 6): <= 25% of the naive layer executions; on GPU <= 10x the wall time of one full pass.
Layer executions count every encoder-stream layer and every decoder layer run per token, per sample,
over all points the sweep evaluates (the full-model point included).

    .venv/bin/python benchmarks/grid_cost.py [--spec sweeps/demo.toml] [--limit 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mue_bench import runner
from mue_bench.spec import GridSpec, load_spec

GRID = {"tau_img": [0.97, 0.98, 0.99, 0.995, 0.998], "tau_txt": [0.95, 0.97, 0.98, 0.99, 0.995],
        "tau_dec": [0.9, 0.95, 0.98, 0.995, 0.998]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/demo.toml")
    parser.add_argument("--limit", type=int, default=40)
    args = parser.parse_args()

    spec = load_spec(Path(args.spec))
    grid = GridSpec(**GRID, encoder_mode=spec.grid.encoder_mode[:1], kv_fill=spec.grid.kv_fill[:1],
                    dec_schedule=spec.grid.dec_schedule[:1])
    with tempfile.TemporaryDirectory() as out:
        spec = spec.model_copy(update={
            "grid": grid, "output": spec.output.model_copy(update={"dir": out}),
            "data": spec.data.model_copy(update={"limit": args.limit}),
            "timing": spec.timing.model_copy(update={"warmup": 0, "repeats": 1})})
        t0 = time.perf_counter()
        outcome = runner.run_sweep(spec, runner.SweepOptions(fresh=True, meteor=False))
        total = time.perf_counter() - t0

    points, samples = outcome.points, outcome.samples
    full_id = points.loc[points["layer_savings"] == 0, "point_id"].iloc[0]
    full = points.set_index("point_id").loc[full_id]
    n_grid = len(points) - 1
    executions = samples["layers_used"].sum()
    naive = n_grid * samples.loc[samples["point_id"] == full_id, "layers_used"].sum()
    print(f"{args.spec}: {n_grid} grid points (+ the full model) x {int(full['n'])} samples, "
          f"device {full['device_name']}")
    print(f"{'layer executions, sweep':<40}{executions:>12,}")
    print(f"{'layer executions, naive (125 x full)':<40}{naive:>12,}   sweep / naive = {executions / naive:.3f}")
    print(f"{'model time, one full pass':<40}{full['wall_s']:>12.2f} s")
    print(f"{'model time, whole sweep':<40}{points['wall_s'].sum():>12.2f} s   "
          f"= {points['wall_s'].sum() / full['wall_s']:.1f} x one full pass")
    print(f"{'sweep wall time (load, score, write too)':<40}{total:>12.2f} s")


if __name__ == "__main__":
    main()
