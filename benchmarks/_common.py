"""What the performance scripts share: their parser and device, interleaved timing, models and inputs, and
sweeps run into a throwaway folder.

It lives in one place so that every script warms up, times and picks its device the same way, and a fix to
how one script measures reaches the others. Each script keeps only its own measurement. Scripts run as
`python benchmarks/NAME.py`, which puts this folder first on `sys.path`, so `import _common` needs nothing more.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import torch

from mue_bench.data.loaders import Sample
from mue_bench.models.hf.random import random_hf_model
from mue_bench.run import runner
from mue_bench.run.prepare import load_samples
from mue_bench.run.timing import timed
from mue_bench.spec import DataSpec, SweepSpec

K = TypeVar("K", bound=Hashable)


def parser(doc: str, device: bool = False) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring; `device` adds `--device`."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if device:
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def interleaved_medians(runs: dict[K, Callable[[], object]], repeats: int, device: torch.device) -> dict[K, float]:
    """Median seconds of each run. Every run is called once untimed first (the first call per model and input
    shape is never timed), then the runs take turns `repeats` times, so drift hits every variant alike."""
    for fn in runs.values():
        fn()
    times: dict[K, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(timed(fn, device)[1])
    return {key: median(v) for key, v in times.items()}


def caption_samples(n: int) -> list[Sample]:
    """The first n shapes test captions, cycled when n is larger than the split, for a batch of n."""
    samples = load_samples(DataSpec(task="caption"))
    return (samples * n)[:n]


def load_model(name: str, batch_size: int, device: torch.device, tiny=None):
    """(adapter, batch) on the device: `tiny`, a TinyAdapter, on shapes test captions; an OFA size with random
    weights ("ofa-base") on the same captions at its own resolution; or else the transformers model `name`
    ("<family>-<shape>", e.g. florence2-large) with random weights built from its config (no downloads) on
    random inputs."""
    if tiny is not None:
        adapter, batch = tiny, tiny.prepare(caption_samples(batch_size))
    elif name.startswith("ofa-"):
        from mue_bench.models.ofa.adapter import OFAAdapter

        adapter = OFAAdapter.random(name)
        batch = adapter.prepare(caption_samples(batch_size))
    else:
        family, _, shape = name.partition("-")
        adapter, batch = random_hf_model(family, shape, batch_size)
    adapter.model.to(device)
    return adapter, batch.to(device)


def updated(spec: SweepSpec, **fields) -> SweepSpec:
    """spec with fields replaced; a dict replaces fields of that section: `updated(spec, data={"limit": 40})`."""
    return spec.model_copy(update={
        name: getattr(spec, name).model_copy(update=value) if isinstance(value, dict) else value
        for name, value in fields.items()})


def timed_sweep(spec: SweepSpec, options: runner.SweepOptions, limit: int | None = None, cold: bool = False,
                **fields) -> tuple[runner.SweepOutcome, float]:
    """Run the sweep into a temporary folder, so a benchmark never resumes from or overwrites real results;
    return its outcome and wall seconds. `limit` caps the samples; `cold` starts from an empty cache."""
    with tempfile.TemporaryDirectory() as out:
        if cold:
            os.environ["MUE_BENCH_CACHE"] = str(Path(out) / "cache")
        spec = updated(spec, output={"dir": out}, **({"data": {"limit": limit}} if limit else {}), **fields)
        t0 = time.perf_counter()
        outcome = runner.run_sweep(spec, options)
        return outcome, time.perf_counter() - t0


@contextmanager
def time_parts(parts: dict[str, tuple[Any, str]], spent: dict[str, float]) -> Iterator[None]:
    """Wrap each part's function, `parts[name] = (owner, attribute)`, so that its seconds add up in spent[name]
    (from outside in: a part called inside another counts in both); unwrap on exit."""
    originals = {name: getattr(owner, attr) for name, (owner, attr) in parts.items()}
    for name, (owner, attr) in parts.items():

        def wrapped(*a, _fn=originals[name], _name=name, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(owner, attr, wrapped)
    try:
        yield
    finally:
        for name, (owner, attr) in parts.items():
            setattr(owner, attr, originals[name])
