"""The exit engine with exits disabled vs the model's own generate(), per generated token.

Target: within 5% of `generate()` per token. Both produce the same tokens (tested elsewhere);
the cost per token is the slope between a short and a long generation (ignore_eos / min_new_tokens fix
the lengths), so the encoder and the vision tower, identical in both, cancel out. The engine runs every
step through its exit bookkeeping (similarity per layer, fill of skipped slots), which is its overhead
over transformers' loop. Medians over repeats, alternating the two so drift hits both.
With `--exit-sync eager,lagged` the engine runs once per way of reading exit flags (mue/sync.py); with exits
disabled lagged never speculates, so its column is eager's minus the host syncs it no longer waits on.

    .venv/bin/python benchmarks/loop_overhead.py [--models florence2-tiny,florence2-base,t5gemma2-tiny] [--batch 1]
        [--exit-sync eager,lagged]
"""

from __future__ import annotations

from typing import get_args

import torch
from _common import interleaved_medians, load_model, parser

from mue_bench.models.registry import device_name
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_model
from mue_bench.mue.sync import ExitSync


def per_token(model_name: str, batch_size: int, short: int, long: int, repeats: int, device: torch.device,
              syncs: tuple[str, ...] = ("eager",)):
    adapter, batch = load_model(model_name, batch_size, device)
    cfg = ExitConfig(encoder_mode="freeze")
    runs = {}
    for n in (short, long):
        dec = adapter.decoding(max_len=n, ignore_eos=True)
        for sync in syncs:
            runs[(_engine(sync), n)] = lambda d=dec, s=sync: run_model(adapter, batch, cfg, d, s)
        runs[("generate", n)] = lambda d=dec: adapter.reference_generate(batch, d)
    with torch.no_grad():
        t = interleaved_medians(runs, repeats, device)
    slope = {who: (t[(who, long)] - t[(who, short)]) / (long - short) for who, _ in runs if _ == short}
    return slope


def _engine(sync: str) -> str:
    return "engine" if sync == "eager" else f"engine-{sync}"


def main() -> None:
    p = parser(__doc__, device=True)
    p.add_argument("--models", default="florence2-tiny,florence2-base,t5gemma2-tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--short", type=int, default=4)
    p.add_argument("--long", type=int, default=36)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--exit-sync", default="eager", help="ways of reading exit flags to time, e.g. eager,lagged")
    args = p.parse_args()
    syncs = tuple(dict.fromkeys(["eager", *args.exit_sync.split(",")]))
    if not set(syncs) <= set(get_args(ExitSync)):
        p.error(f"--exit-sync: choose from {', '.join(get_args(ExitSync))}")
    others = [s for s in syncs if s != "eager"]
    device = torch.device(args.device)
    name = device_name(device)
    print(f"device {name}, batch {args.batch}, per-token time = slope between {args.short} and {args.long} tokens, "
          f"median of {args.repeats}")
    print(f"{'model':<18}{'generate() ms/token':>22}{'engine ms/token':>18}{'engine / generate':>20}"
          + "".join(f"{s + ' ms/token':>18}{s + ' / eager':>16}" for s in others))
    for model_name in args.models.split(","):
        slope = per_token(model_name, args.batch, args.short, args.long, args.repeats, device, syncs)
        print(f"{model_name:<18}{1e3 * slope['generate']:>22.3f}{1e3 * slope['engine']:>18.3f}"
              f"{slope['engine'] / slope['generate']:>20.3f}"
              + "".join(f"{1e3 * slope[_engine(s)]:>18.3f}{slope[_engine(s)] / slope['engine']:>16.3f}"
                        for s in others))


if __name__ == "__main__":
    main()
