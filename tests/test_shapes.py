"""The synthetic benchmark: deterministic, in the real formats, with varied difficulty."""

import hashlib
import json
import random
from collections import Counter

import pytest

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


def _relation_names(hypothesis: str) -> tuple[str, str]:
    """("red circle", "blue square") from "the red circle is left of the blue square"."""
    first, second = hypothesis.removeprefix("the ").split(" is left of the ")
    return first, second


def test_version_3_changes_only_the_entailment_files(tmp_path):
    sizes = {"train": 20, "test": 10}
    v2 = shapes.generate(tmp_path / "v2", seed=5, sizes=sizes, version=2)
    v3 = shapes.generate(tmp_path / "v3", seed=5, sizes=sizes, version=3)
    for name in ["dataset_coco.json"] + [f"images/{p.name}" for p in (v2 / "images").iterdir()]:
        assert (v2 / name).read_bytes() == (v3 / name).read_bytes(), name
    assert (v2 / "snli_ve_test.jsonl").read_bytes() != (v3 / "snli_ve_test.jsonl").read_bytes()


def test_version_3_neutral_hypotheses_are_worded_as_relations_and_name_a_missing_shape(tmp_path):
    root = shapes.generate(tmp_path / "s", seed=0, sizes={"train": 300}, version=3)
    present = {img["filename"].removesuffix(".png"): img["sentences"][0]["raw"]
               for img in json.loads((root / "dataset_coco.json").read_text())["images"]}
    rows = [json.loads(line) for line in (root / "snli_ve_train.jsonl").read_text().splitlines()]
    relations = Counter(r["gold_label"] for r in rows if " is left of " in r["sentence2"])
    # The template no longer gives the label away: true, reversed and neutral relations all occur.
    assert min(relations.values()) > 60 and set(relations) == {"entailment", "contradiction", "neutral"}
    for r in rows:
        if r["gold_label"] == "neutral":
            names = _relation_names(r["sentence2"])
            caption = present[r["Flickr30K_ID"]]  # "a small red circle and a large blue square"
            missing = [n for n in names if n not in caption]
            assert len(missing) == 1, r
            # It shares a colour or a kind with a shape the image has, so neither alone shows it is missing.
            colour, kind = missing[0].split()
            assert f"{colour} " in caption or f" {kind}" in caption, r


def test_ensure_regenerates_when_the_version_differs(tmp_path):
    root = shapes.ensure(tmp_path / "s", seed=0, sizes={"test": 2}, version=2)
    shapes.ensure(root, seed=0, version=3)
    assert json.loads((root / shapes.MARKER).read_text())["version"] == 3


def test_an_unknown_generator_version_is_refused(tmp_path):
    with pytest.raises(ValueError, match="version 9"):
        shapes.generate(tmp_path / "s", version=9)
    assert not (tmp_path / "s").exists()


def _scene(*xs: int) -> list[shapes.Shape]:
    kinds = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("white", "circle")]
    return [shapes.Shape(c, k, "small", x, 10 + 12 * i, 4) for i, ((c, k), x) in enumerate(zip(kinds, xs))]


def _true_and_false_relations(scene, min_gap):
    for seed in range(200):
        for hyp, label in shapes.hypotheses_v3(scene, random.Random(seed), min_gap=min_gap):
            if " is left of " in hyp and label != "neutral":
                yield _relation_names(hyp), label


def test_version_4_relates_only_shapes_a_clear_gap_apart():
    near = _scene(20, 25)  # 5 px apart: version 3 relates them, version 4 says something else
    assert any(True for _ in _true_and_false_relations(near, 0))
    assert not any(True for _ in _true_and_false_relations(near, shapes.RELATION_GAP))
    # Red at 10 and blue at 14 are too close; green at 30 is clear of both, so every relation names it.
    named = {names for names, _ in _true_and_false_relations(_scene(10, 14, 30), shapes.RELATION_GAP)}
    assert named == {("red circle", "green triangle"), ("blue square", "green triangle"),
                     ("green triangle", "red circle"), ("green triangle", "blue square")}


def test_version_4_keeps_the_images_and_captions_and_relations_of_all_three_labels(tmp_path):
    v3 = shapes.generate(tmp_path / "v3", seed=0, sizes={"train": 300}, version=3)
    v4 = shapes.generate(tmp_path / "v4", seed=0, sizes={"train": 300}, version=4)
    for name in ["dataset_coco.json"] + [f"images/{p.name}" for p in (v3 / "images").iterdir()]:
        assert (v3 / name).read_bytes() == (v4 / name).read_bytes(), name
    rows = [json.loads(line) for line in (v4 / "snli_ve_train.jsonl").read_text().splitlines()]
    assert rows != [json.loads(line) for line in (v3 / "snli_ve_train.jsonl").read_text().splitlines()]
    relations = Counter(r["gold_label"] for r in rows if " is left of " in r["sentence2"])
    assert min(relations.values()) > 60 and set(relations) == {"entailment", "contradiction", "neutral"}


def test_scenes_replay_what_generate_writes_with_the_shapes_behind_it(tmp_path):
    sizes = {"train": 6, "test": 4}
    root = shapes.generate(tmp_path / "s", seed=2, sizes=sizes, version=4)
    drawn = list(shapes.scenes(2, sizes, version=4))
    rows = [json.loads(line) for split in sizes
            for line in (root / f"snli_ve_{split}.jsonl").read_text().splitlines()]
    assert [(r["Flickr30K_ID"], r["sentence2"], r["gold_label"]) for r in rows] == [
        (scene.name, hyp, label) for scene in drawn for hyp, label in scene.pairs]
    written = json.loads((root / "dataset_coco.json").read_text())["images"]
    assert [[s["raw"] for s in img["sentences"]] for img in written] == [shapes.captions(s.shapes) for s in drawn]
    assert [s.x for s in drawn[0].shapes] == sorted(s.x for s in drawn[0].shapes)


def test_an_unknown_version_fails_when_scenes_are_asked_for_not_when_first_drawn():
    with pytest.raises(ValueError, match="version 9"):
        shapes.scenes(0, version=9)
