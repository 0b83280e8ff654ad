"""The synthetic benchmark: deterministic, in the real formats, with varied difficulty."""

import hashlib
import json
from collections import Counter

from mue_bench.data import shapes
from mue_bench.data.loaders import load_karpathy, load_snli_ve


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_different_seed_different_files(tmp_path):
    sizes = {"train": 5, "test": 3}
    a = shapes.generate(tmp_path / "a", seed=1, sizes=sizes)
    b = shapes.generate(tmp_path / "b", seed=1, sizes=sizes)
    c = shapes.generate(tmp_path / "c", seed=2, sizes=sizes)
    assert _digest(a) == _digest(b) != _digest(c)


def test_real_format_loaders_read_it(shapes_root):
    caps = load_karpathy(shapes_root / "dataset_coco.json", shapes_root, "test")
    assert len(caps) == 8 and all(len(s.references) == 5 and s.image.is_file() for s in caps)
    ent = load_snli_ve(shapes_root / "snli_ve_test.jsonl", shapes_root / "images", "{id}.png")
    assert len(ent) == 24 and {s.label for s in ent} == {"yes", "no", "maybe"}
    assert all(s.image.is_file() for s in ent)


def test_difficulty_varies_across_samples(tmp_path):
    root = shapes.generate(tmp_path / "s", seed=0, sizes={"train": 200})
    data = json.loads((root / "dataset_coco.json").read_text())
    counts = Counter(img["sentences"][2]["raw"].split()[0] for img in data["images"])
    assert set(counts) == {"one", "two", "three", "four"}
    sizes = Counter(w for img in data["images"] for w in img["sentences"][0]["raw"].split()
                    if w in ("small", "large"))
    assert sizes["small"] > 20 and sizes["large"] > 20


def test_ensure_reuses_an_existing_benchmark(tmp_path):
    root = shapes.ensure(tmp_path / "s", seed=0, sizes={"train": 2})
    marker = (root / shapes.MARKER).stat().st_mtime_ns
    shapes.ensure(tmp_path / "s", seed=0, sizes={"train": 2})
    assert (root / shapes.MARKER).stat().st_mtime_ns == marker


def test_ensure_without_sizes_accepts_any_benchmark_of_that_seed(tmp_path):
    root = shapes.ensure(tmp_path / "s", seed=3, sizes={"test": 2})
    shapes.ensure(root, seed=3)
    assert json.loads((root / shapes.MARKER).read_text())["sizes"] == {"test": 2}
