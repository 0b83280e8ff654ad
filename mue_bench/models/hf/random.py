"""Random-weight transformers models by name ("florence2-large", "t5gemma2-270m"), with a batch of inputs:
what the speed benchmarks run when no checkpoint is at hand (built from config, nothing downloaded)."""

from __future__ import annotations

from mue_bench.errors import MueBenchError
from mue_bench.models.hf.base import HFAdapterBase, HFBatch


def random_hf_model(name: str, batch_size: int, seed: int = 0) -> tuple[HFAdapterBase, HFBatch]:
    from mue_bench.models.hf import florence2, t5gemma2

    family, _, shape = name.partition("-")
    if family == "florence2" and shape in florence2.SHAPES:
        adapter = florence2.random_florence2(shape, seed=seed)
        return adapter, florence2.random_inputs(adapter, [8] * batch_size, florence2.SHAPES[shape]["image_size"])
    if family == "t5gemma2" and shape in t5gemma2.SHAPES:
        adapter = t5gemma2.random_t5gemma2(shape, seed=seed)
        return adapter, t5gemma2.random_inputs(adapter, [(2, 6)] * batch_size)
    known = [f"florence2-{s}" for s in florence2.SHAPES] + [f"t5gemma2-{s}" for s in t5gemma2.SHAPES]
    raise MueBenchError(f"unknown random model {name!r} (use one of {', '.join(known)})")
