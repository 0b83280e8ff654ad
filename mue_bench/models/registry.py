"""From a spec's [model] table to a loaded adapter on the chosen device and dtype."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mue_bench.errors import MueBenchError
from mue_bench.models.tiny.adapter import BUILTIN_DIR, TinyAdapter
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


def load_adapter(spec: ModelSpec, device: torch.device, dtype: str):
    if spec.family == "mue-tiny":
        adapter = TinyAdapter.load(spec.checkpoint)
    elif spec.family == "florence2":
        from mue_bench.models.hf.florence2 import Florence2Adapter

        adapter = Florence2Adapter.load(spec.checkpoint, spec.trust_remote_code, spec.attn_implementation)
    elif spec.family == "t5gemma2":
        from mue_bench.models.hf.t5gemma2 import T5Gemma2Adapter

        adapter = T5Gemma2Adapter.load(spec.checkpoint, spec.trust_remote_code, spec.attn_implementation)
    else:  # pragma: no cover - the spec's Literal already refuses other names
        raise MueBenchError(f"unknown model family {spec.family!r}")
    adapter.model.to(device=device, dtype=DTYPES[dtype])
    return adapter


def checkpoint_hash(spec: ModelSpec) -> str:
    """sha256 of the weight files, so results name exactly which weights produced them. A hub id is
    hashed from the files of its local cache copy when there is one; random weights are named as such."""
    if spec.checkpoint.startswith("random:"):
        return spec.checkpoint
    path = BUILTIN_DIR / spec.checkpoint if (BUILTIN_DIR / spec.checkpoint).is_dir() else Path(spec.checkpoint)
    if not path.is_dir():
        path = _hub_snapshot(spec.checkpoint)
        if path is None:
            return f"hub:{spec.checkpoint}"
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a valid id, or no hub library: fall back to naming it
        return None
