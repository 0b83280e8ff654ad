"""What every results row records about how it was made (DESIGN.md §3): versions, device, revision.

The device's name and host are a point's own (summarise.with_origins, from its samples): the workers of one
sweep may differ."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import torch

import mue_bench
from mue_bench.models.registry import checkpoint_hash
from mue_bench.mue.search import DecodingConfig
from mue_bench.spec import SweepSpec


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"



def provenance(spec: SweepSpec, device: torch.device, run_id: str, decoding: DecodingConfig | None = None) -> dict:
    """Where a sweep's points came from. `decoding`: the settings the engine searched with (a checkpoint's
    generation config may set what the spec left out), else the spec's."""
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = "not installed"
    return {
        "run_id": run_id, "spec_name": spec.name, "spec_hash": spec.spec_hash(),
        "context_hash": spec.context_hash(), "model_family": spec.model.family,
        "checkpoint": spec.model.checkpoint, "checkpoint_hash": checkpoint_hash(spec.model.resolved),
        "dataset": spec.data.dataset, "split": spec.data.split, "task": spec.data.task,
        "device": str(device), "dtype": spec.run.dtype,
        "batch_size": spec.run.batch_size, "parity": spec.grid.parity, "exit_sync": spec.timing.exit_sync,
        "num_beams": (decoding or spec.decoding).num_beams, "max_len": (decoding or spec.decoding).max_len,
        "torch_version": torch.__version__,
        "transformers_version": tf_version, "mue_bench_version": mue_bench.__version__,
        "git_rev": _git_rev(), "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


