"""What the studies share: the demo spec of each task, sweeps run into a throwaway folder, and the model run
over a list of samples in batches.

Studies measure the built-in model on the synthetic shapes data (quality, trade-off, grounding), not speed, so
they batch for throughput and skip warm-up. Scripts run as `python studies/NAME.py`, which puts this folder
first on `sys.path`, so `import _common` needs nothing more.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pandas as pd

from mue_bench.data.loaders import Sample
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.mue import ExitConfig, run_batch
from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import SweepSpec

SPECS = {"caption": "sweeps/demo.toml", "entailment": "sweeps/demo-entailment.toml"}
BATCH = 50  # quality does not depend on the batch (batch invariance is tested): batch for speed


def updated(spec: SweepSpec, **fields) -> SweepSpec:
    """spec with fields replaced; a dict replaces fields of that section: `updated(spec, data={"limit": 40})`."""
    return spec.model_copy(update={
        name: getattr(spec, name).model_copy(update=value) if isinstance(value, dict) else value
        for name, value in fields.items()})


def sweep_points(spec: SweepSpec, options: SweepOptions) -> pd.DataFrame:
    """The points of spec's sweep, run batched without warm-up into a temporary folder (nothing is resumed or
    kept)."""
    with tempfile.TemporaryDirectory() as out:
        spec = updated(spec, output={"dir": out}, run={"batch_size": BATCH}, timing={"warmup": 0})
        return run_sweep(spec, options).points


def in_batches(adapter: TinyAdapter, samples: list[Sample], cfg: ExitConfig, max_len: int) -> Iterator[tuple]:
    """(sample, its result) for every sample, greedy at cfg, decoding at most max_len tokens."""
    decoding = adapter.decoding(max_len=max_len)
    for i in range(0, len(samples), BATCH):
        chunk = samples[i:i + BATCH]
        yield from zip(chunk, run_batch(adapter, adapter.prepare(chunk), cfg, decoding).samples)
