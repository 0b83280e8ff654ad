"""The exit engine with exits disabled vs the model's own generate(), per generated token.

Target: within 5% of `generate()` per token. Both produce the same tokens (tested elsewhere);
the cost per token is the slope between a short and a long generation (ignore_eos / min_new_tokens fix
the lengths), so the encoder and the vision tower, identical in both, cancel out. The engine runs every
step through its exit bookkeeping (similarity per layer, fill of skipped slots), which is its overhead
over transformers' loop. Medians over repeats, alternating the two so drift hits both.

    .venv/bin/python benchmarks/loop_overhead.py [--models florence2-tiny,florence2-base,t5gemma2-tiny] [--batch 1]
"""

from __future__ import annotations

import torch
from _common import interleaved_medians, load_model, parser

from mue_bench.models.registry import device_name
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_model


def per_token(model_name: str, batch_size: int, short: int, long: int, repeats: int, device: torch.device):
    adapter, batch = load_model(model_name, batch_size, device)
    cfg = ExitConfig(encoder_mode="freeze")
    runs = {}
    for n in (short, long):
        dec = adapter.decoding(max_len=n, ignore_eos=True)
        runs[("engine", n)] = lambda d=dec: run_model(adapter, batch, cfg, d)
        runs[("generate", n)] = lambda d=dec: adapter.reference_generate(batch, d)
    with torch.no_grad():
        t = interleaved_medians(runs, repeats, device)
    slope = {who: (t[(who, long)] - t[(who, short)]) / (long - short) for who in ("engine", "generate")}
    return slope


def main() -> None:
    p = parser(__doc__, device=True)
    p.add_argument("--models", default="florence2-tiny,florence2-base,t5gemma2-tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--short", type=int, default=4)
    p.add_argument("--long", type=int, default=36)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    name = device_name(device)
    print(f"device {name}, batch {args.batch}, per-token time = slope between {args.short} and {args.long} tokens, "
          f"median of {args.repeats}")
    print(f"{'model':<18}{'generate() ms/token':>22}{'engine ms/token':>18}{'engine / generate':>20}")
    for model_name in args.models.split(","):
        slope = per_token(model_name, args.batch, args.short, args.long, args.repeats, device)
        print(f"{model_name:<18}{1e3 * slope['generate']:>22.3f}{1e3 * slope['engine']:>18.3f}"
              f"{slope['engine'] / slope['generate']:>20.3f}")


if __name__ == "__main__":
    main()
