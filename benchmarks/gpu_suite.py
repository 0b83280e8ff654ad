"""The GPU suite: every benchmark whose target names a GPU, in one run that fits a lent machine's minutes.

A lent GPU comes for minutes, rarely, and reaches no package registry, so the suite is one command prepared and
dry-run beforehand (tests/test_gpu_suite.py runs it with `--tiny` on CPU). Each step is one benchmark script run
in its own process (benchmarks/_guarded.py: the scoring stack made unimportable, peak memory recorded) with its
own share of the time budget: a step that fails or runs out of time does not stop the others, and its error and
whatever it printed go in its table. The output is one Markdown file, device and date at its head, with a
section per step in the shape of benchmarks/RESULTS.md (command, then the printed table), to paste there.

    python benchmarks/gpu_suite.py [--out benchmarks/gpu_results.md] [--budget 480] [--tiny]

Run it through benchmarks/gpu_suite.sh, which installs the carried pydantic wheels first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Step:
    title: str
    script: str
    args: tuple[str, ...]
    share: float  # of the total budget
    tiny_args: tuple[str, ...]  # the dry run's: tiny models, batch 1 and 2, one repeat


REALIZATION = ("realization.py: fixed-exit speedup over the ideal FLOP speedup, beside the authors' loop; "
               "exit_sync lagged over eager")
SYNCS = ("--exit-sync", "eager,lagged")  # which way of reading exit flags the engine should default to
STEPS = (
    Step(f"{REALIZATION} (Florence-2-large)", "realization.py",
         ("--models", "florence2-large", "--batches", "1,32", *SYNCS), 0.16,
         ("--models", "mue-tiny", "--batches", "1,2", "--repeats", "1", "--max-len", "4", *SYNCS)),
    Step(f"{REALIZATION} (T5Gemma 2 270M)", "realization.py",
         ("--models", "t5gemma2-270m", "--batches", "1,32", *SYNCS), 0.16,
         ("--models", "t5gemma2-tiny", "--batches", "2", "--repeats", "1", "--max-len", "4", *SYNCS)),
    Step(f"{REALIZATION} (OFA-base)", "realization.py",
         ("--models", "ofa-base", "--batches", "1,32", *SYNCS), 0.12,
         ("--models", "ofa-tiny", "--batches", "2", "--repeats", "1", "--max-len", "2", *SYNCS)),
    Step("loop_overhead.py: the engine with exits disabled vs the model's own generate(), per token, eager and "
         "lagged", "loop_overhead.py", ("--models", "florence2-large,t5gemma2-270m", "--batch", "1", *SYNCS), 0.14,
         ("--models", "florence2-tiny", "--short", "2", "--long", "4", "--repeats", "1", *SYNCS)),
    Step("batch_compaction.py: compaction vs masked execution when a batch's samples exit at different layers",
         "batch_compaction.py", ("--models", "mue-tiny,wide,florence2-large", "--batches", "8,32"), 0.16,
         ("--models", "mue-tiny", "--batches", "2", "--repeats", "1", "--max-len", "4")),
    Step("grid_cost.py: a 5x5x5 threshold grid against naive cost and one full pass", "grid_cost.py",
         ("--no-scoring", "--sharing", "certificates"), 0.26,
         ("--no-scoring", "--grid", "2", "--limit", "3")),
)


def _device_line() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"{name} ({mem:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _revision(given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown (no git here; pass --rev)"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git here; pass --rev)"


def header(rev: str, budget: float, tiny: bool) -> str:
    import torch
    import transformers

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kind = "DRY RUN on tiny models (`--tiny`): these numbers measure nothing" if tiny else "full run"
    return (f"# GPU suite results\n\n"
            f"- device: {_device_line()}\n- date: {when}\n- revision: {rev}\n"
            f"- torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}\n"
            f"- {kind}; time budget {budget:.0f} s, shared out per step\n")


def _text(output: bytes | str | None) -> str:
    """What a timed-out process printed (TimeoutExpired may hold bytes even in text mode)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_step(step: Step, budget_s: float, tiny: bool, python: str) -> tuple[str, str, float, str]:
    """One script in its own process under its budget: its section of the results whatever happened, its status,
    wall seconds and peak device memory."""
    args = step.tiny_args if tiny else step.args
    shown = " ".join(["python", f"benchmarks/{step.script}", *args])
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MUE_SUITE_STATS": str(stats),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        t0 = time.perf_counter()
        try:
            done = subprocess.run([python, str(HERE / "_guarded.py"), str(HERE / step.script), *args], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=budget_s)
            out, err, status = done.stdout, done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired as e:
            out, err, status = _text(e.stdout), _text(e.stderr), f"timed out after {budget_s:.0f} s"
        wall = time.perf_counter() - t0
        peak = json.loads(stats.read_text()).get("peak_mem_bytes") if stats.exists() else None
    mem = f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a"
    section = [f"## {step.title}\n", f"`{shown}`: {status}, {wall:.0f} s, peak GPU memory {mem}\n",
               "```", out.rstrip() or "(printed nothing)", "```"]
    if status != "ok":
        section += ["", "error (last lines of stderr):", "```", _tail(err) or "(nothing)", "```"]
    print(f"{step.script} {' '.join(args)}: {status} in {wall:.0f} s", flush=True)
    return "\n".join(section) + "\n", status, wall, mem


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "gpu_results.md"))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    p.add_argument("--tiny", action="store_true", help="dry run: tiny models on CPU, batch 1 and 2, one repeat")
    p.add_argument("--only", default="", help="scripts to run, e.g. realization,grid_cost (default: all)")
    p.add_argument("--rev", default=None, help="the git revision to record, where the tree has no .git")
    args = p.parse_args()

    only = {name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()}
    steps = [s for s in STEPS if not only or s.script.removesuffix(".py") in only]
    started, sections, summary = time.perf_counter(), [], []
    for i, step in enumerate(steps):
        # a step's share of what is left, so time a fast step leaves goes to the later ones
        left = args.budget - (time.perf_counter() - started)
        share = step.share / sum(s.share for s in steps[i:])
        text, status, wall, mem = run_step(step, max(left * share, 10.0), args.tiny, sys.executable)
        sections.append(text)
        summary.append(f"| {step.script} {' '.join(step.tiny_args if args.tiny else step.args)} | {status} "
                       f"| {wall:.0f} | {mem} |")
    table = ["## Steps\n", "| step | status | wall s | peak GPU memory |", "|---|---|---|---|", *summary, ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([header(_revision(args.rev), args.budget, args.tiny), *table, *sections]))
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    failed = [line for line in summary if "| ok |" not in line]
    if failed:
        sys.exit(f"{len(failed)} of {len(steps)} steps did not finish; their errors are in {out}")


if __name__ == "__main__":
    main()
