"""Loaders name the file and row of a problem."""

import json

import pytest

from mue_bench.data.loaders import load_karpathy, load_snli_ve
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
