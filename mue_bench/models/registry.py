"""From a spec's [model] table to a loaded adapter on the chosen device and dtype."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mue_bench.errors import MueBenchError
from mue_bench.models.tiny_adapter import BUILTIN_DIR, TinyAdapter
from mue_bench.spec import ModelSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MueBenchError(f"unknown device {name!r} (try cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MueBenchError(f"device {name!r} requested but CUDA is not available")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_adapter(spec: ModelSpec, device: torch.device, dtype: str) -> TinyAdapter:
    if spec.family == "mue-tiny":
        adapter = TinyAdapter.load(spec.checkpoint)
    else:  # pragma: no cover - the spec's Literal already refuses other names
        raise MueBenchError(f"unknown model family {spec.family!r}")
    adapter.model.to(device=device, dtype=DTYPES[dtype])
    return adapter


def checkpoint_hash(spec: ModelSpec) -> str:
    """sha256 of the weight files, so results name exactly which weights produced them."""
    path = BUILTIN_DIR / spec.checkpoint if (BUILTIN_DIR / spec.checkpoint).is_dir() else Path(spec.checkpoint)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
