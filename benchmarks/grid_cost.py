"""What a 5x5x5 threshold grid costs: layer executions and wall time of the sweep, against the naive
cost (125 full-model evaluations) and against one full-model pass.

Targets: <= 25% of the naive layer executions; on GPU <= 10x the wall time of one full pass.
Layer executions count every encoder-stream layer and every decoder layer run per token, per sample,
over all points the sweep evaluates (the full-model point included), as the sweep really ran them: with
grid reuse (`timing.batches`, default 1 timed batch per point) encoder outputs are shared across tau_dec and
generations across points where a sample reaches the same exits; `--timed-batches 0` runs every point in full.

    .venv/bin/python benchmarks/grid_cost.py [--spec sweeps/demo.toml] [--limit 40] [--timed-batches 1]
"""

from __future__ import annotations

from pathlib import Path

from _common import parser, timed_sweep

from mue_bench.run import runner
from mue_bench.spec import GridSpec, load_spec

GRID = {"tau_img": [0.97, 0.98, 0.99, 0.995, 0.998], "tau_txt": [0.95, 0.97, 0.98, 0.99, 0.995],
        "tau_dec": [0.9, 0.95, 0.98, 0.995, 0.998]}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--spec", default="sweeps/demo.toml")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--timed-batches", type=int, default=1, help="0: no reuse, every batch timed")
    args = p.parse_args()

    spec = load_spec(Path(args.spec))
    grid = GridSpec(**GRID, encoder_mode=spec.grid.encoder_mode[:1], kv_fill=spec.grid.kv_fill[:1],
                    dec_schedule=spec.grid.dec_schedule[:1])
    outcome, total = timed_sweep(spec, runner.SweepOptions(fresh=True, meteor=False), limit=args.limit, grid=grid,
                                 timing={"warmup": 0, "repeats": 1, "batches": args.timed_batches or None})

    points, samples = outcome.points, outcome.samples
    full_id = points.loc[points["layer_savings"] == 0, "point_id"].iloc[0]
    full = points.set_index("point_id").loc[full_id]
    n_grid = len(points) - 1
    executions = outcome.layer_executions
    per_pass = samples.loc[samples["point_id"] == full_id, "layers_used"].sum()
    naive = n_grid * per_pass
    batches = f"{args.timed_batches} timed batch(es) per point, the rest reused" if args.timed_batches else \
        "every batch timed, no reuse"
    print(f"{args.spec}: {n_grid} grid points (+ the full model) x {int(full['n'])} samples, batch size "
          f"{int(full['batch_size'])}, {batches}; device {full['device_name']}")
    print(f"{'layer executions, sweep (all points)':<44}{executions:>12,}")
    print(f"{'layer executions, naive (grid x full pass)':<44}{naive:>12,}   sweep / naive = {executions / naive:.3f}")
    print(f"{'model time, one full pass (all samples)':<44}{full['wall_s']:>12.2f} s")
    print(f"{'sweep wall time (load, score, write too)':<44}{total:>12.2f} s   "
          f"= {total / full['wall_s']:.1f} x one full pass")


if __name__ == "__main__":
    main()
