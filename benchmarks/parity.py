"""What each of the authors' quirks costs: the same grid with the quirks all off (mue-bench's clean MuE), all on
(parity), and each alone, at batch 1 and batch 8.

The quirks (README "OFA and the paper"): batch-global exits (`exit_scope = "batch"`), no K/V for skipped layers
(`kv_fill = "none"`), the LM head after every executed decoder layer (`head_every_layer`), the official decoder
schedule, separate encoder streams (`split`), and for OFA the image stream without its relative bias. The
built-in mue-tiny (trained, on shapes captions) shows what they do to quality and savings; an OFA-shaped model
with random weights (its quality is meaningless: read its layer, FLOP and time columns) shows what the OFA-only
quirk and the per-layer head cost at OFA's widths. Every setting's savings are against its own full model, as
the paper's "expected inference time" is (a full model with the per-layer head also pays for it).
`kv_fill = "none"` alone at batch 8 is not a setting that can run (rows of a batch would keep different cache
lengths): its row there runs it with batch scope.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/parity.py [--limit 40] [--batches 1,8] [--ofa tiny]
"""

from __future__ import annotations

from pathlib import Path

from _common import parser, timed_sweep, updated

from mue_bench.mue.config import format_tau
from mue_bench.run.calibrate import propose_grid
from mue_bench.run.runner import SweepOptions
from mue_bench.spec import load_spec

CLEAN = {"encoder_mode": ["freeze"], "kv_fill": ["copy"], "dec_schedule": ["constant"], "exit_scope": ["sample"],
         "head_every_layer": [False]}
ALONE = {"batch-global exits": {"exit_scope": ["batch"]}, "no K/V fill": {"kv_fill": ["none"]},
         "head every layer": {"head_every_layer": [True]}, "official schedule": {"dec_schedule": ["official"]},
         "split streams": {"encoder_mode": ["split"]}}
PARITY = {"encoder_mode": ["split"], "kv_fill": ["none"], "dec_schedule": ["official"], "exit_scope": ["batch"],
          "head_every_layer": [True]}


def settings(ofa: bool) -> dict[str, tuple[dict, dict]]:
    """Name -> (grid fields, model fields)."""
    out = {"clean (mue-bench)": (CLEAN, {})}
    out |= {name: (CLEAN | change, {}) for name, change in ALONE.items()}
    if ofa:
        out["no image relative bias"] = (CLEAN, {"image_rel_bias": False})
    out["parity (all on)"] = (PARITY, {"image_rel_bias": False} if ofa else {})
    return out


def run(spec, limit: int, batch: int, ofa: bool) -> list[dict]:
    rows = []
    for name, (grid, model) in settings(ofa).items():
        if batch > 1 and grid["kv_fill"] == ["none"] and grid["exit_scope"] == ["sample"]:
            grid = grid | {"exit_scope": ["batch"]}
        s = updated(spec, grid=grid, model=model, run={"batch_size": batch})
        outcome, _ = timed_sweep(type(s).model_validate(s.model_dump()), SweepOptions(meteor=False), limit=limit)
        pts = outcome.points[~outcome.points["is_full"] & (outcome.points["status"] == "ok")]
        for r in pts.itertuples():
            point = f"({format_tau(r.tau_img)}, {format_tau(r.tau_txt)}, {format_tau(r.tau_dec)})"
            rows.append({"setting": name, "batch": batch, "point": point, "quality": r.quality,
                         "quality_rel": r.quality_rel, "layer": r.layer_savings, "flop": r.flop_savings,
                         "time": r.time_savings, "lo": r.time_savings_lo, "hi": r.time_savings_hi})
    return rows


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}", flush=True)
    print(f"{'setting':<24}{'batch':>6}  {'(τ_img, τ_txt, τ_dec)':<24}{'quality':>9}{'rel.':>8}{'layer sav.':>12}"
          f"{'FLOP sav.':>11}{'time sav. [95% CI]':>24}")
    for r in rows:
        point = r["point"]
        time = f"{100 * r['time']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"
        print(f"{r['setting']:<24}{r['batch']:>6}  {point:<24}{r['quality']:>9.3f}{100 * r['quality_rel']:>7.1f}%"
              f"{100 * r['layer']:>11.1f}%{100 * r['flop']:>10.1f}%{time:>24}", flush=True)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--ofa", default="tiny", help="OFA size for the OFA-shaped rows ('' to skip them)")
    p.add_argument("--skip-tiny", action="store_true", help="only the OFA-shaped rows")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    # mue-tiny at the demo's two picked triples (99% and 95% of full CIDEr-D with clean MuE)
    tiny = updated(load_spec(Path("sweeps/demo.toml")),
                   grid={"tau_img": [0.99], "tau_txt": [-1.0], "tau_dec": [0.9, -1.0]}, timing={"warmup": 1})
    if not args.skip_tiny:
        show(f"mue-tiny, shapes test captions (n={args.limit})",
             [r for b in batches for r in run(tiny, args.limit, b, ofa=False)])
    if args.ofa:
        ofa = updated(tiny, model={"family": "ofa", "checkpoint": f"random:{args.ofa}"})
        # Random weights: thresholds at the median of the full model's own similarities, so that streams and
        # tokens exit somewhere (calibrate-grid's proposal at the 50th percentile).
        median = propose_grid(ofa, 4, [50.0])
        ofa = updated(ofa, grid={"tau_img": median.tau_img, "tau_txt": median.tau_txt, "tau_dec": median.tau_dec})
        show(f"OFA-{args.ofa} shape, random weights (quality meaningless), n={min(args.limit, 8)}",
             [r for b in batches for r in run(ofa, min(args.limit, 8), b, ofa=True)])


if __name__ == "__main__":
    main()
