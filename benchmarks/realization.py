"""Do saved layers show up on the clock? Fixed-exit speedup over the full model vs the ideal FLOP speedup.

Target: realization >= 0.9 at batch 1 (GPU and CPU) and >= 0.7 at batch 32 on GPU, for the
Florence-2-large-shaped model. Every stream and token exits after k of L layers (fixed-exit mode, so
random weights suffice). realization = measured speedup / ideal speedup, where ideal = full FLOPs /
exit FLOPs from the engine's analytic count (vision tower included: no exit skips it).

Side by side, in the same run, the authors' own loop (`authors_loop`): separate text and image streams, one
cosine similarity over the whole flattened batch per layer with a Python `if` on that device tensor (a host
sync per layer per token), the LM head after every executed decoder layer, and no K/V fill. Both sides run
the encoder as separate streams (`split`), so they share the ideal speedup.

With `--exit-sync eager,lagged` the engine also runs with the lagged exit check (mue/sync.py: the next layer is
queued before the last one's flags are read, one speculative layer per exit), timed in the same interleaved
runs, and a second table gives lagged's time over eager's for the full model and the exit setting: below 1,
lagged helps there. On CPU nothing is queued, so only its cost (the speculative layers) can show.

    .venv/bin/python benchmarks/realization.py [--models mue-tiny,florence2-large,t5gemma2-270m,ofa-base]
        [--batches 1,32] [--exit-sync eager,lagged]
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from _common import interleaved_medians, load_model, parser

from mue_bench.models.registry import device_name
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import collect, run_model
from mue_bench.mue.sync import ExitSync


def _flat_cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(new.flatten().float(), old.flatten().float(), dim=0)


def authors_loop(adapter, batch, k: int | None, max_len: int, eos_id: int) -> list[list[int]]:
    """Greedy decoding as the authors' released code runs MuE (Tangshengku/OFA @b329878, unify_transformer.py):
    the text stream, then the image stream, each through the layers alone until one cosine over the whole
    flattened batch passes (a Python `if` on a device tensor: a host sync per layer); per token the same test
    per decoder layer, the LM head after every executed layer that goes on, and no K/V for skipped layers (their
    copy never runs). With fixed exits no token reaches a skipped layer, so the missing entries are never read."""
    streams = adapter.embed_streams(batch)
    done = {}
    for stream, h, mask in (("text", streams.text, streams.text_mask), ("image", streams.image, streams.image_mask)):
        for layer in range(adapter.n_enc_layers):
            new = adapter.encoder_layer(layer, h, mask, stream=stream)
            sim = _flat_cosine(new, h)
            h = new
            if (k is not None and layer + 1 >= k) or sim > 2.0:
                break
        done[stream] = h
    enc = adapter.encoder_norm(torch.cat([done["image"], done["text"]], 1))
    mask = torch.cat([streams.image_mask, streams.text_mask], 1)
    cache = adapter.decoder_cache(enc)
    tokens = torch.full((enc.shape[0],), adapter.bos_id, dtype=torch.long, device=enc.device)
    out = []
    for step in range(max_len):
        x = adapter.decoder_embed(tokens, step)
        for layer in range(adapter.n_dec_layers):
            new = adapter.decoder_layer(layer, x, cache, mask)
            sim = _flat_cosine(new, x)
            x = new
            if (k is not None and layer + 1 >= k) or sim > 2.0:
                break
            adapter.logprobs(x)  # the per-layer head of the authors' loop (inner_out_states), unused
        logprobs = adapter.logprobs(x)
        logprobs[:, eos_id] = float("-inf")
        tokens = logprobs.argmax(-1)
        out.append(tokens)
    return torch.stack(out, 1).tolist()


@torch.no_grad()
def measure(name: str, batch_size: int, max_len: int, repeats: int, device: torch.device,
            syncs: tuple[str, ...] = ("eager",)) -> dict:
    adapter, batch = load_model(name, batch_size, device, TinyAdapter.load("mue-tiny") if name == "mue-tiny" else None)
    k = adapter.n_enc_layers // 2
    full_cfg = ExitConfig(encoder_mode="split")
    exit_cfg = ExitConfig(encoder_mode="split", fixed_exit=(k, k, adapter.n_dec_layers // 2))
    dec = adapter.decoding(max_len=max_len, ignore_eos=True)
    flops = {}
    for key, cfg in (("full", full_cfg), ("exit", exit_cfg)):
        flops[key] = sum(s.flops for s in collect(adapter, run_model(adapter, batch, cfg, dec), cfg).samples)
    runs = {
        ("engine", "full"): lambda: run_model(adapter, batch, full_cfg, dec),
        ("engine", "exit"): lambda: run_model(adapter, batch, exit_cfg, dec),
        ("authors", "full"): lambda: authors_loop(adapter, batch, None, max_len, adapter.eos_id),
        ("authors", "exit"): lambda: authors_loop(adapter, batch, k, max_len, adapter.eos_id),
    }
    for sync in syncs:
        if sync != "eager":
            for key, cfg in (("full", full_cfg), ("exit", exit_cfg)):
                runs[(f"engine-{sync}", key)] = lambda c=cfg, s=sync: run_model(adapter, batch, c, dec, s)
    t = interleaved_medians(runs, repeats, device)
    ideal = flops["full"] / flops["exit"]
    row = {"model": name, "batch": batch_size, "k": f"{k}/{adapter.n_enc_layers}", "ideal": ideal}
    for who in ("engine", "authors"):
        speedup = t[(who, "full")] / t[(who, "exit")]
        row[f"{who}_full_s"], row[f"{who}_speedup"], row[f"{who}_realization"] = \
            t[(who, "full")], speedup, speedup / ideal
    for sync in syncs:
        who = "engine" if sync == "eager" else f"engine-{sync}"
        row[f"{sync}_full_s"], row[f"{sync}_exit_s"] = t[(who, "full")], t[(who, "exit")]
    return row


def print_sync_table(rows: list[dict], syncs: tuple[str, ...]) -> None:
    """Each exit_sync's times beside eager's, from the same interleaved runs."""
    print("\nexit_sync: the engine's times (s) per way of reading exit flags, and each over eager's")
    print(f"{'model':<17}{'batch':>6}{'sync':>8}{'full s':>9}{'exit s':>9}{'full / eager':>14}{'exit / eager':>14}")
    for r in rows:
        for sync in syncs:
            print(f"{r['model']:<17}{r['batch']:>6}{sync:>8}{r[f'{sync}_full_s']:>9.3f}{r[f'{sync}_exit_s']:>9.3f}"
                  f"{r[f'{sync}_full_s'] / r['eager_full_s']:>14.3f}{r[f'{sync}_exit_s'] / r['eager_exit_s']:>14.3f}")


def main() -> None:
    p = parser(__doc__, device=True)
    p.add_argument("--models", default="mue-tiny,florence2-large")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--max-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exit-sync", default="eager", help="ways of reading exit flags to time, e.g. eager,lagged")
    args = p.parse_args()
    syncs = tuple(dict.fromkeys(["eager", *args.exit_sync.split(",")]))  # eager first: the others divide by it
    if not set(syncs) <= set(get_args(ExitSync)):
        p.error(f"--exit-sync: choose from {', '.join(get_args(ExitSync))}")
    device = torch.device(args.device)
    name = device_name(device)
    print(f"device {name}; fixed exit after half the layers (encoder streams and every decoder token); "
          f"{args.max_len} tokens; median of {args.repeats}")
    print(f"{'model':<17}{'batch':>6}{'k/L':>7}{'ideal x':>9}{'engine x':>10}{'realiz.':>9}{'full s':>9}"
          f"{'authors x':>11}{'realiz.':>9}{'full s':>9}")
    rows = []
    for model in args.models.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            r = measure(model, b, args.max_len, args.repeats, device, syncs)
            rows.append(r)
            print(f"{r['model']:<17}{r['batch']:>6}{r['k']:>7}{r['ideal']:>9.2f}{r['engine_speedup']:>10.2f}"
                  f"{r['engine_realization']:>9.2f}{r['engine_full_s']:>9.3f}{r['authors_speedup']:>11.2f}"
                  f"{r['authors_realization']:>9.2f}{r['authors_full_s']:>9.3f}", flush=True)
    if len(syncs) > 1:
        print_sync_table(rows, syncs)


if __name__ == "__main__":
    main()
