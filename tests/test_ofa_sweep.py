"""OFA as a family of the spec: converted folders and random sizes load, shapes samples become OFA's inputs,
a sweep writes both files, SNLI-VE-style entailment ranks the answers by default; mistakes are one line."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch

from mue_bench.errors import SpecError
from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.models.ofa.config import OFAConfig
from mue_bench.models.ofa.model import OFAModel
from mue_bench.models.ofa.tokenizer import vocab_size
from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import load_spec
from tests.ofa_fixture_weights import fixture_state_dict
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_model import TINY, _save


def _folder(root, tokenizer_dir=None):
    """A converted-style OFA folder: safetensors, config.json, ofa_task.json (64 px), the tokenizer if given."""
    cfg = dict(TINY)
    if tokenizer_dir is not None:
        cfg["vocab_size"] = vocab_size(tokenizer_dir)
    model = OFAModel(OFAConfig.from_dict(cfg))
    shapes = {k: v.shape for k, v in model.state_dict().items() if v.is_floating_point()}
    model.load_state_dict(fixture_state_dict(shapes, seed=7), strict=False)
    _save(model, root)
    (root / "ofa_task.json").write_text(json.dumps({"patch_image_size": 64}))
    if tokenizer_dir is not None:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(tokenizer_dir / name, root / name)
    return root


def _spec(tmp_path, shapes_root, checkpoint, task="caption", extra=""):
    path = tmp_path / "ofa.toml"
    path.write_text(textwrap.dedent(f"""
        name = "ofa"
        [model]
        family = "ofa"
        checkpoint = "{checkpoint}"
        [data]
        root = "{shapes_root}"
        task = "{task}"
        limit = 4
        [decoding]
        max_len = 5
        [grid]
        tau_img = [0.5]
        tau_txt = [0.9]
        tau_dec = [0.3, 2.0]
        encoder_mode = ["freeze"]
        [run]
        batch_size = 2
        [timing]
        warmup = 0
        [output]
        dir = "{tmp_path / 'results'}"
        {extra}
        """))
    return load_spec(path)


def test_a_converted_folder_sweeps_shapes_and_writes_both_files(tmp_path, shapes_root):
    folder = _folder(tmp_path / "ofa-ckpt")
    spec = _spec(tmp_path, shapes_root, folder)
    adapter = OFAAdapter.load(spec.model.resolved)
    assert adapter.image_size == 64 and adapter.tokenizer is None
    out = run_sweep(spec, SweepOptions(meteor=False))
    assert set(out.points["point_id"]) == {"full-freeze", "img=0.5-txt=0.9-dec=0.3-freeze-copy-constant",
                                           "img=0.5-txt=0.9-dec=off-freeze-copy-constant"}
    assert (out.points["model_family"] == "ofa").all() and out.points["n"].eq(4).all()
    assert spec.results_path().is_file() and spec.samples_path().is_file()


def test_entailment_ranks_ofas_answers_by_default(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    folder = _folder(tmp_path / "ofa-tok", bpe_dir)
    spec = _spec(tmp_path, shapes_root, folder, task="entailment")
    assert spec.decoding.answers == ("no", "yes", "maybe")
    out = run_sweep(spec, SweepOptions(meteor=False))
    assert set(out.samples["prediction"]) <= {"no", "yes", "maybe"}
    assert out.points["accuracy"].notna().all()


def test_entailment_without_a_tokenizer_is_one_line(tmp_path, shapes_root):
    spec = _spec(tmp_path, shapes_root, _folder(tmp_path / "ofa-ckpt"), task="entailment")
    with pytest.raises(SpecError, match="no tokenizer.*decoding.answers = \\[\\]"):
        run_sweep(spec, SweepOptions(meteor=False))


def test_random_sizes_are_checkpoints(tmp_path, shapes_root):
    spec = _spec(tmp_path, shapes_root, "random:base")
    assert str(spec.model.resolved) == "random:base"
    with pytest.raises(SpecError, match="unknown random shape 'gigantic' for ofa"):
        _spec(tmp_path, shapes_root, "random:gigantic")


def test_unconverted_checkpoints_say_how_to_convert(tmp_path, shapes_root):
    pt = tmp_path / "caption_base_best.pt"
    torch.save({"model": {}}, pt)
    with pytest.raises(SpecError, match="fairseq checkpoint.*mue-bench convert"):
        _spec(tmp_path, shapes_root, pt)
    port = tmp_path / "ofa-port"
    port.mkdir()
    (port / "config.json").write_text("{}")
    (port / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SpecError, match="no model.safetensors; convert it once with `mue-bench convert"):
        _spec(tmp_path, shapes_root, port)
    with pytest.raises(SpecError, match="OFA checkpoints are local folders"):
        _spec(tmp_path, shapes_root, "OFA-Sys/ofa-base")
