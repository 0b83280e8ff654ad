"""Random-weight transformers models of a named shape (spec.RANDOM_SHAPES), with a batch of inputs: what
the speed benchmarks run when no checkpoint is at hand (built from config, nothing downloaded)."""

from __future__ import annotations

from mue_bench.errors import SpecError
from mue_bench.models.hf.base import HFAdapterBase, HFBatch
from mue_bench.spec import parse_checkpoint


def random_hf_model(family: str, shape: str, batch_size: int, seed: int = 0) -> tuple[HFAdapterBase, HFBatch]:
    from mue_bench.models.hf import florence2, t5gemma2

    try:
        parse_checkpoint(family, f"random:{shape}")
    except ValueError as e:
        raise SpecError(str(e)) from None
    if family == "florence2":
        adapter = florence2.random_florence2(shape, seed=seed)
        return adapter, florence2.random_inputs(adapter, [8] * batch_size, florence2.SHAPES[shape]["image_size"])
    adapter = t5gemma2.random_t5gemma2(shape, seed=seed)
    return adapter, t5gemma2.random_inputs(adapter, [(2, 6)] * batch_size)
