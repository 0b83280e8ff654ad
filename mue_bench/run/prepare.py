"""Everything before timing starts: a spec's [data] table to samples, the model loaded, inputs pre-processed.

Sweeps and grid calibration share it, so both see exactly the same batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mue_bench.data import shapes
from mue_bench.data.loaders import Sample, check_images, load_jsonl, load_karpathy, load_snli_ve
from mue_bench.data.ofa_tsv import CAPTION_COLUMNS, SNLI_VE_COLUMNS, load_caption_tsv, load_snli_ve_tsv
from mue_bench.errors import SpecError
from mue_bench.models.registry import load_adapter
from mue_bench.mue.engine import Engine
from mue_bench.mue.rank import RankEngine
from mue_bench.spec import TSV_DATASETS, DataSpec, ModelSpec, SweepSpec


def load_samples(spec: DataSpec, limit: int | None = None) -> list[Sample]:
    if spec.dataset == "shapes":
        root = shapes.ensure(Path(spec.root or ""), spec.seed, version=spec.version)
        if spec.task == "caption":
            samples = load_karpathy(root / "dataset_coco.json", root, spec.split)
        else:
            samples = load_snli_ve(root / f"snli_ve_{spec.split}.jsonl", root / "images", "{id}.png")
    elif spec.dataset == "coco-karpathy":
        samples = load_karpathy(Path(spec.annotations or ""), Path(spec.images or ""), spec.split)
    elif spec.dataset == "jsonl":
        samples = load_jsonl(Path(spec.annotations or ""), Path(spec.images or ""), spec.task)
    elif spec.dataset in TSV_DATASETS:
        samples = load_tsv(spec, limit or spec.limit)
    else:
        samples = load_snli_ve(Path(spec.annotations or ""), Path(spec.images or ""), spec.image_pattern)
    limit = limit or spec.limit
    samples = samples[:limit] if limit else samples
    if not samples:
        raise SpecError(f"no samples in split {spec.split!r} of dataset {spec.dataset!r}")
    return samples


def load_tsv(spec: DataSpec, limit: int | None) -> list[Sample]:
    """OFA's TSV files; reading stops after `limit` samples (a test file holds many thousand images)."""
    path = Path(spec.annotations or "")
    if spec.dataset == "snli-ve-tsv":
        return load_snli_ve_tsv(path, spec.columns or SNLI_VE_COLUMNS, limit)
    references = Path(spec.references) if spec.references is not None else None
    return load_caption_tsv(path, spec.columns or CAPTION_COLUMNS, references, limit)


def batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]



# What a sweep needs before timing starts: an engine, the samples, and their batches ready on the device.
Loader = Callable[[SweepSpec, torch.device], tuple[Engine, list[Sample], list[Any]]]


def prepare_inputs(spec: SweepSpec, device: torch.device) -> tuple[Engine, list[Sample], list[Any]]:
    """The spec's model as an engine, its samples, and their pre-processed batches on the device."""
    samples = load_samples(spec.data)
    check_premises(spec.model, spec.data, samples)
    check_images(samples)
    adapter = load_adapter(spec.model, device, spec.run.dtype, spec.decoding.generation_config)
    # only what the spec sets: a transformers checkpoint's generation config provides the rest
    decoding = adapter.decoding(**spec.decoding.model_dump(include={"num_beams", "max_len", "no_repeat_ngram",
                                                                    "ignore_eos"}, exclude_unset=True))
    if spec.decoding.answers:
        decoding = replace(decoding, answers=tuple(adapter.answer_ids(a) for a in spec.decoding.answers))
    engine_class = RankEngine if spec.decoding.mode == "rank" else Engine
    engine = engine_class(adapter, decoding, spec.timing.exit_sync)
    return engine, samples, prepare_batches(engine, samples, spec.run.batch_size, device)


def check_premises(model: ModelSpec, data: DataSpec, samples: list[Sample]) -> None:
    """model.add_caption needs every sample's premise (a sample's own JSONL prompt replaces the task's): refused
    before the model loads, naming the file (a sweep's and a fine-tuning run's)."""
    if not model.add_caption:
        return
    missing = [s for s in samples if not s.premise and not s.prompt]
    if missing:
        source = data.annotations or f"the {data.dataset} data"
        raise SpecError(f"model.add_caption: {len(missing)} of {len(samples)} samples of {source} have no premise "
                        f"(first: {missing[0].sample_id}; SNLI-VE's sentence1, its TSV's caption column, a JSONL "
                        "'premise'); use data that carries it, or remove add_caption")


def prepare_batches(engine: Engine, samples: list[Sample], size: int, device: torch.device) -> list[Any]:
    """The samples in pre-processed batches of `size`, on the device (again at a smaller size after an OOM)."""
    return [engine.prepare(chunk).to(device) for chunk in batched(samples, size)]


