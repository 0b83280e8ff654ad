"""From a spec's [model] table to a loaded adapter on the chosen device and dtype."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.tiny.adapter import TinyAdapter
from mue_bench.spec import Checkpoint, ModelSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SpecError(f"unknown device {name!r} (try cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} requested but CUDA is not available (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SpecError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SpecError(f"device {name!r}: mue-bench runs on cpu, cuda or mps")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_adapter(spec: ModelSpec, device: torch.device, dtype: str, generation_config: str = "checkpoint"):
    """`generation_config` (the spec's decoding.generation_config): whether a transformers checkpoint's own
    decoding settings are used; mue-tiny has none."""
    checkpoint = spec.resolved
    if spec.family == "mue-tiny":
        adapter = TinyAdapter.load(str(checkpoint))
    elif spec.family == "florence2":
        from mue_bench.models.hf.florence2 import Florence2Adapter

        adapter = Florence2Adapter.load(checkpoint, spec.trust_remote_code, spec.attn_implementation,
                                        generation_config)
    elif spec.family == "t5gemma2":
        from mue_bench.models.hf.t5gemma2 import T5Gemma2Adapter

        adapter = T5Gemma2Adapter.load(checkpoint, spec.trust_remote_code, spec.attn_implementation,
                                       generation_config)
    elif spec.family == "ofa":
        from mue_bench.models.ofa.adapter import OFAAdapter

        adapter = OFAAdapter.load(checkpoint)
        adapter.image_rel_bias = spec.image_rel_bias
        adapter.add_caption, adapter.prompt_type = spec.add_caption, spec.prompt_type
    else:  # pragma: no cover - the spec's Literal already refuses other names
        raise MueBenchError(f"unknown model family {spec.family!r}")
    adapter.model.to(device=device, dtype=DTYPES[dtype])
    return adapter


def weights_folder(checkpoint: Checkpoint) -> Path | None:
    """Where the loader read the weights from: the folder, or for a hub id its local cache copy (there once
    the model is loaded). None for random weights."""
    if checkpoint.kind == "random":
        return None
    if checkpoint.path is not None:
        return checkpoint.path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(checkpoint.ref, local_files_only=True))
    except Exception:  # not in the cache (or no hub library): nothing on disk to hash
        return None


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    """sha256 over the weight files loaded, so results name exactly which weights produced them; random
    weights are named by their shape, a hub id with no local copy by its id."""
    folder = weights_folder(checkpoint)
    if folder is None:
        return str(checkpoint) if checkpoint.kind == "random" else f"hub:{checkpoint.ref}"
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
