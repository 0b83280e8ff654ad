"""Loaders name the file and row of a problem."""

import json

import pytest

from mue_bench.data.loaders import load_jsonl, load_karpathy, load_snli_ve
from mue_bench.errors import SpecError


def test_malformed_karpathy_entry_names_file_and_index(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": [{"split": "test", "filename": "a.jpg", "sentences": [{"raw": "x"}]},
                                        {"split": "test", "sentences": []}]}))
    with pytest.raises(SpecError, match=r"dataset_coco.json: images\[1\] is malformed"):
        load_karpathy(f, tmp_path, "test")


def test_malformed_snli_ve_row_names_file_and_line(tmp_path):
    f = tmp_path / "snli.jsonl"
    f.write_text(json.dumps({"Flickr30K_ID": "1", "sentence2": "x", "gold_label": "entailment"}) + "\n{oops\n")
    with pytest.raises(SpecError, match=r"snli.jsonl:2: not valid JSON"):
        load_snli_ve(f, tmp_path)


def test_unknown_label_is_named(tmp_path):
    f = tmp_path / "snli.jsonl"
    f.write_text(json.dumps({"Flickr30K_ID": "1", "sentence2": "x", "gold_label": "-"}) + "\n")
    with pytest.raises(SpecError, match=r"snli.jsonl:1: missing or unknown value '-'"):
        load_snli_ve(f, tmp_path)


def test_restval_counts_as_train(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": [{"split": "restval", "filepath": "val2014", "filename": "a.jpg",
                                         "cocoid": 7, "sentences": [{"raw": " A cat. "}]}]}))
    [s] = load_karpathy(f, tmp_path, "train")
    assert s.sample_id == "7" and s.references == ("A cat.",) and s.image == tmp_path / "val2014" / "a.jpg"


def test_generic_jsonl_reads_prompts_references_and_labels(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps({"id": "a", "image": "x/1.png", "prompt": "<CAPTION>", "references": [" A cat. "]})
                 + "\n\n" + json.dumps({"image": "2.png", "references": ["a dog"]}) + "\n")
    first, second = load_jsonl(f, tmp_path, "caption")
    assert (first.sample_id, first.image, first.prompt, first.references) == ("a", tmp_path / "x/1.png",
                                                                             "<CAPTION>", ("A cat.",))
    assert second.sample_id == "3" and second.prompt == ""
    g = tmp_path / "cls.jsonl"
    g.write_text(json.dumps({"image": "1.png", "prompt": "is it red?", "label": "yes"}) + "\n")
    [s] = load_jsonl(g, tmp_path, "entailment")
    assert s.label == "yes" and s.task == "entailment"


@pytest.mark.parametrize(("row", "message"), [
    ('{"image": "1.png"}', r"data.jsonl:2: needs 'image' and 'references'"),
    ('{"image": "1.png", "references": "a cat"}', r"data.jsonl:2: 'references' must be a non-empty list"),
    ("[1, 2]", r"data.jsonl:2: needs 'image'"),
    ("{oops", r"data.jsonl:2: not valid JSON"),
])
def test_bad_generic_jsonl_row_names_file_and_line(tmp_path, row, message):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps({"image": "0.png", "references": ["ok"]}) + "\n" + row + "\n")
    with pytest.raises(SpecError, match=message):
        load_jsonl(f, tmp_path, "caption")
