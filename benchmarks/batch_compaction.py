"""Does a batch still cost its deepest exit? Batch compaction vs masked execution, side by side.

Samples of one batch exit at different layers. Masked execution runs every layer on the whole
batch while any row needs it (exited rows are kept by a `where`), so the batch costs its deepest exit;
compaction runs each layer on the rows still active only. Both give identical outputs (tested); this
prints their time. realization = measured speedup over the full model / ideal speedup, where ideal = full
FLOPs / the point's FLOPs from the engine's analytic count.

Models: the shipped mue-tiny on shapes test captions at demo thresholds, and `wide`, a random-weights
mue-tiny at width 768 (compute-bound on CPU, like a real model), and random transformers models such as
`florence2-large` or `t5gemma2-270m`, with thresholds at the median observed similarities. Random weights
make exits nearly uniform across samples, so only the shipped model shows what varied exits cost.

    .venv/bin/python benchmarks/batch_compaction.py [--models mue-tiny,wide,florence2-large] [--batches 8,32]
"""

from __future__ import annotations

import numpy as np
import torch
from _common import interleaved_medians, load_model, parser

from mue_bench.models.registry import device_name
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.models.tiny.model import TinyConfig, TinyOFA
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import collect, run_model

DEMO_POINTS = [(0.99, 0.99, 0.98), (0.97, 0.97, 0.9), (0.995, 0.97, 0.995)]


def _adapter(name: str) -> TinyAdapter:
    shipped = TinyAdapter.load("mue-tiny")
    if name == "mue-tiny":
        return shipped
    torch.manual_seed(0)
    cfg = TinyConfig(vocab_size=shipped.model.cfg.vocab_size, d_model=768, n_heads=12, d_ff=3072,
                     encoder_attention="joint")
    model = TinyOFA(cfg)
    with torch.no_grad():  # large random weights, so hidden states move and similarities spread
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    return TinyAdapter(model, shipped.tokenizer)


def _median_point(adapter, batch, decoding) -> tuple[float, float, float]:
    cfg = ExitConfig(encoder_mode="freeze")
    trace = collect(adapter, run_model(adapter, batch, cfg, decoding), cfg).samples
    img = np.nanmedian([s.enc_img_sims for s in trace])
    txt = np.nanmedian([s.enc_txt_sims for s in trace])
    dec = np.nanmedian([x for s in trace for step in s.dec_sims for x in step])
    return float(img), float(txt), float(dec)


@torch.no_grad()
def measure(name: str, batch_size: int, max_len: int, repeats: int, device: torch.device) -> list[dict]:
    # any other name: a transformers model with random weights, e.g. florence2-large or t5gemma2-270m
    adapter, batch = load_model(name, batch_size, device, _adapter(name) if name in ("mue-tiny", "wide") else None)
    decoding = adapter.decoding(max_len=max_len, no_repeat_ngram=3)
    points = DEMO_POINTS if name == "mue-tiny" else [_median_point(adapter, batch, decoding)]
    full = ExitConfig(encoder_mode="freeze")
    rows = []
    for tau in points:
        cfg = ExitConfig(*tau, encoder_mode="freeze")
        flops = {key: sum(s.flops for s in collect(adapter, run_model(adapter, batch, c, decoding), c).samples)
                 for key, c in (("full", full), ("point", cfg))}

        def run(c: ExitConfig, compact: bool):
            adapter.row_subsets = compact
            return run_model(adapter, batch, c, decoding)

        runs = {"full": lambda: run(full, True), "masked": lambda c=cfg: run(c, False),
                "compacted": lambda c=cfg: run(c, True)}
        t = interleaved_medians(runs, repeats, device)
        ideal = flops["full"] / flops["point"]
        row = {"model": name, "batch": batch_size, "tau": "/".join(f"{x:.3g}" for x in tau), "ideal": ideal,
               "full_s": t["full"]}
        for key in ("masked", "compacted"):
            row[f"{key}_x"] = t["full"] / t[key]
            row[f"{key}_realization"] = row[f"{key}_x"] / ideal
        rows.append(row)
    adapter.row_subsets = True
    return rows


def main() -> None:
    p = parser(__doc__, device=True)
    p.add_argument("--models", default="mue-tiny,wide")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--max-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device_name(device)}; freeze mode, greedy, {args.max_len} tokens; median of {args.repeats}")
    print(f"{'model':<16}{'batch':>6}  {'tau img/txt/dec':<20}{'ideal x':>8}{'full s':>9}"
          f"{'masked x':>10}{'realiz.':>9}{'compact x':>11}{'realiz.':>9}")
    for model in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            for r in measure(model, b, args.max_len, args.repeats, device):
                print(f"{r['model']:<16}{r['batch']:>6}  {r['tau']:<20}{r['ideal']:>8.2f}{r['full_s']:>9.3f}"
                      f"{r['masked_x']:>10.2f}{r['masked_realization']:>9.2f}{r['compacted_x']:>11.2f}"
                      f"{r['compacted_realization']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
