"""What a threshold grid costs: layer executions and wall time of the sweep, against the naive cost (every
point a full-model evaluation), against a lower bound, and against one full-model pass.

Targets: <= 10% of the naive layer executions; on GPU <= 10x the wall time of one full pass.
Layer executions count every encoder-stream layer and every decoder layer run per token, per sample, over all
points the sweep evaluates (the full-model point included), as the sweep really ran them. The first
`--timed-batches` batches of every point run in full and are timed, each run paired with a full-model run; the
rest come from grid reuse (mue/grid_reuse.py), in one of two ways, each its own sweep (`--sharing`):
- `exits`: what grid reuse did before certificates: encoder outputs shared by the points of one encoder
  setting, generations by the points where a sample reaches the same encoder exits and decoder setting;
- `certificates`: besides that, a point whose every exit decision a stored run of the sample makes the same
  way is that run's result, with no model work (the default).
The lower bound is the timed runs plus, for every untimed sample, each distinct behaviour it shows over the
grid computed once: an encoder run per distinct pair of encoder exits, a generation per distinct sequence of
decoder exits after them. `--timed-batches 0` runs every point in full (no reuse at all).

    .venv/bin/python benchmarks/grid_cost.py [--spec sweeps/demo.toml] [--limit 40] [--grid 5|9]
        [--sharing exits,certificates] [--timed-batches 1] [--no-scoring]
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
from _common import parser, scoring_free, timed_sweep, updated

from mue_bench.mue.config import ExitConfig
from mue_bench.run import runner
from mue_bench.run.prepare import prepare_inputs
from mue_bench.spec import GridSpec, SweepSpec, load_spec

GRID = {"tau_img": [0.97, 0.98, 0.99, 0.995, 0.998], "tau_txt": [0.95, 0.97, 0.98, 0.99, 0.995],
        "tau_dec": [0.9, 0.95, 0.98, 0.995, 0.998]}
# --grid 9: the 5-grid's values and four more between and around them
GRID9 = {"tau_img": [0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995, 0.998, 0.999],
         "tau_txt": [0.93, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.998],
         "tau_dec": [0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998]}


def grid_values(n: int) -> dict[str, list[float]]:
    """n thresholds per axis: the demo 5-grid, the 9-grid, or n evenly spaced from the 9-grid (a small dry run)."""
    if n == 5:
        return GRID
    if n == 9:
        return GRID9
    picks = [round(i * 8 / max(n - 1, 1)) for i in range(n)]
    return {axis: [values[i] for i in picks] for axis, values in GRID9.items()}


def sharing_loader(certificates: bool):
    """The spec's own loader, its engine's grid reuse with or without certificates."""
    def load(spec: SweepSpec, device):
        engine, samples, batches = prepare_inputs(spec, device)
        engine.certificates = certificates
        return engine, samples, batches
    return load


def timed_cost(samples: pd.DataFrame, configs: dict[str, ExitConfig], spec: SweepSpec, n_timed: int) -> int:
    """Layer executions of the timed runs as the sweep counts them: each point's timed samples, `repeats` times
    (the full-model run paired with each is timing's price, counted by neither the sweep nor the naive cost)."""
    timed = samples[samples["sample_index"] < n_timed].groupby("point_id")["layers_used"].sum()
    return sum(runner._repeats(spec, cfg) * int(timed[pid]) for pid, cfg in configs.items())


def distinct_cost(samples: pd.DataFrame, configs: dict[str, ExitConfig], n_timed: int, n_dec_layers: int) -> int:
    """Each untimed sample's distinct behaviours computed once: encoder runs per distinct encoder exits (and
    mode, scope), generations per distinct decoder exits after them (kv_fill and the LM-head quirk matter only
    where some layer was skipped)."""
    enc: set = set()
    dec: set = set()
    total = 0
    for row in samples[samples["sample_index"] >= n_timed].itertuples():
        cfg = configs[row.point_id]
        e = (row.sample_index, cfg.encoder_mode, cfg.exit_scope, row.enc_img_layers, row.enc_txt_layers)
        if e not in enc:
            enc.add(e)
            total += row.enc_img_layers + row.enc_txt_layers
        layers = tuple(int(u) for u in row.dec_layers)
        skipped = any(u < n_dec_layers for u in layers)
        d = (*e, cfg.kv_fill if skipped else None, cfg.head_every_layer, cfg.fixed_exit, layers)
        if d not in dec:
            dec.add(d)
            total += sum(layers)
    return total


class _Trie:
    """Runs as sequences of (symbol, cost): a new run costs what lies past its longest prefix shared with runs
    already in, as if it were forked from one of them at its first differing decision."""

    def __init__(self):
        self.root: dict = {}

    def add(self, run: list[tuple[Hashable, int]]) -> int:
        node, cost = self.root, 0
        for symbol, c in run:
            if symbol not in node:
                node[symbol] = {}
                cost += c
            node = node[symbol]
        return cost


def _encoder_run(mode: str, e_img: int, e_txt: int) -> list[tuple[Hashable, int]]:
    """Per layer, which streams it updates (freeze: the streams share each layer's attention, so a run is one
    sequence); split streams are independent, one sequence each."""
    if mode == "split":
        return [(("img", layer), 1) for layer in range(e_img)] + [(("txt", layer), 1) for layer in range(e_txt)]
    return [((layer < e_img, layer < e_txt), (layer < e_img) + (layer < e_txt)) for layer in range(max(e_img, e_txt))]


def _decoder_run(layers: tuple[int, ...]) -> list[tuple[Hashable, int]]:
    """Per step, a symbol per layer run and one for the exit after them: two runs share a step's layers up to
    the shallower one's exit."""
    run: list[tuple[Hashable, int]] = []
    for used in layers:
        run += [("layer", 1)] * used + [("exit", 0)]
    return run


def prefix_cost(samples: pd.DataFrame, configs: dict[str, ExitConfig], n_timed: int, n_dec_layers: int) -> int:
    """Each untimed sample's distinct behaviours with shared prefixes computed once: a bound for sharing that
    forks a run at its first differing decision (encoder runs per sample; generations per encoder exits)."""
    enc: dict = {}
    dec: dict = {}
    total = 0
    for row in samples[samples["sample_index"] >= n_timed].itertuples():
        cfg = configs[row.point_id]
        e = (row.sample_index, cfg.encoder_mode, cfg.exit_scope)
        total += enc.setdefault(e, _Trie()).add(_encoder_run(cfg.encoder_mode, row.enc_img_layers,
                                                             row.enc_txt_layers))
        layers = tuple(int(u) for u in row.dec_layers)
        skipped = any(u < n_dec_layers for u in layers)
        d = (*e, row.enc_img_layers, row.enc_txt_layers, cfg.kv_fill if skipped else None, cfg.head_every_layer,
             cfg.fixed_exit)
        total += dec.setdefault(d, _Trie()).add(_decoder_run(layers))
    return total


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--spec", default="sweeps/demo.toml")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--grid", type=int, default=5, help="thresholds per axis: 5 (the demo grid) or 9")
    p.add_argument("--sharing", default="exits,certificates", help="comma-separated: exits, certificates")
    p.add_argument("--timed-batches", type=int, default=1, help="0: no reuse, every batch timed")
    p.add_argument("--no-scoring", action="store_true", help="skip scoring (quality NaN): no pycocoevalcap or Java")
    args = p.parse_args()

    spec = load_spec(Path(args.spec))
    grid = GridSpec(**grid_values(args.grid), encoder_mode=spec.grid.encoder_mode[:1],
                    kv_fill=spec.grid.kv_fill[:1], dec_schedule=spec.grid.dec_schedule[:1])
    timing = {"warmup": 0, "repeats": 1, "batches": args.timed_batches or None}
    modes = [m.strip() for m in args.sharing.split(",")] if args.timed_batches else ["none"]
    runs = {}
    with scoring_free() if args.no_scoring else nullcontext():
        for mode in modes:
            runs[mode] = timed_sweep(spec, runner.SweepOptions(fresh=True, meteor=False), limit=args.limit,
                                     load=sharing_loader(mode == "certificates"), grid=grid, timing=timing)

    outcome = next(iter(runs.values()))[0]
    points, samples = outcome.points, outcome.samples
    run_spec = updated(spec, grid=grid, timing=timing, **({"data": {"limit": args.limit}} if args.limit else {}))
    configs = {c.point_id: c for c in run_spec.points()}
    full_id = next(pid for pid, c in configs.items() if c.is_full)
    full = points.set_index("point_id").loc[full_id]
    n_grid = len(points) - 1
    full_rows = samples[samples["point_id"] == full_id]
    per_pass = int(full_rows["layers_used"].sum())
    naive = n_grid * per_pass
    n_timed = (args.timed_batches or 0) * int(full["batch_size"])
    n_dec_layers = max((max(u) for u in full_rows["dec_layers"] if len(u)), default=0)

    shared = {"none": "every batch timed, no reuse", "exits": "shared by encoder exits (grid reuse before)",
              "certificates": "shared by exit certificates"}
    print(f"{args.spec}: {n_grid} grid points ({args.grid} per axis, + the full model) x {int(full['n'])} samples, "
          f"batch size {int(full['batch_size'])}, {args.timed_batches} timed batch(es) per point; "
          f"device {full['device_name']}")
    print(f"{'layer executions':<60}{'count':>12}{'/ naive':>10}")
    print(f"{'naive (grid x one full pass)':<60}{naive:>12,}{1:>10.3f}")
    for mode, (out, _) in runs.items():
        print(f"{'sweep, ' + shared[mode]:<60}{out.layer_executions:>12,}{out.layer_executions / naive:>10.3f}")
    if args.timed_batches:
        timed = timed_cost(samples, configs, run_spec, n_timed)
        bound = timed + distinct_cost(samples, configs, n_timed, n_dec_layers)
        print(f"{'lower bound: timed runs + each distinct behaviour once':<60}{bound:>12,}{bound / naive:>10.3f}")
        forked = timed + prefix_cost(samples, configs, n_timed, n_dec_layers)
        print(f"{'bound for forking at the first differing decision':<60}{forked:>12,}{forked / naive:>10.3f}")
        print(f"{'  of which the timed runs':<60}{timed:>12,}{timed / naive:>10.3f}")
    print(f"{'model time, one full pass (all samples)':<60}{full['wall_s']:>12.2f} s")
    scoring = "scoring skipped" if args.no_scoring else "scoring too"
    for mode, (_, total) in runs.items():
        print(f"{f'sweep wall time, {mode} (load, {scoring}, write)':<60}{total:>12.2f} s"
              f"   = {total / full['wall_s']:.1f} x one full pass")


if __name__ == "__main__":
    main()
