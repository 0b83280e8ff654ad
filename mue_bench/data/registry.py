"""From a spec's [data] table to a list of samples, whatever the on-disk format."""

from __future__ import annotations

from pathlib import Path

from mue_bench.data import shapes
from mue_bench.data.loaders import Sample, load_jsonl, load_karpathy, load_snli_ve
from mue_bench.errors import SpecError
from mue_bench.spec import DataSpec


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
    else:
        samples = load_snli_ve(Path(spec.annotations or ""), Path(spec.images or ""), spec.image_pattern)
    limit = limit or spec.limit
    samples = samples[:limit] if limit else samples
    if not samples:
        raise SpecError(f"no samples in split {spec.split!r} of dataset {spec.dataset!r}")
    return samples
