"""safe_pickle: checkpoints load as data; nothing a pickle names is ever called."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from mue_bench.errors import SpecError
from mue_bench.models.safe_pickle import Inert, load_checkpoint, plain


class _Boom:
    """Unpickling this runs `touch marker` if anything calls what the pickle names."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _TrainerMeter:  # a class the loader cannot import by the time it reads: stands for fairseq's meters
    def __init__(self):
        self.avg = 1.5


def test_malicious_top_level_is_neutralised(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_Boom(marker), tmp_path / "evil.pt")
    out = load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    assert isinstance(out, Inert) and out.qualname.endswith(".system")


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_inside_args_is_neutralised_and_weights_load(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    args = argparse.Namespace(arch="ofa_base", hook=_Boom(marker))
    weights = {"encoder.embed_tokens.weight": torch.randn(5, 3)}
    torch.save({"model": weights, "args": args}, tmp_path / "evil.pt", _use_new_zipfile_serialization=zip_format)
    out = load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    assert torch.equal(out["model"]["encoder.embed_tokens.weight"], weights["encoder.embed_tokens.weight"])
    assert out["args"].arch == "ofa_base"
    assert isinstance(out["args"].hook, Inert)


def test_bare_pickle_with_a_global_call_is_refused_uncalled(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"args": _Boom(marker)}, protocol=2))
    with pytest.raises(SpecError, match="raw.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "raw.pt")  # no torch header: not a checkpoint, and nothing ran
    assert not marker.exists()


def test_namespace_checkpoint_loads_tensors_and_readable_args(tmp_path):
    import numpy as np

    args = argparse.Namespace(arch="ofa_tiny", encoder_layers=4, best=np.float64(0.5), lr=[1e-4])
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "args": args, "extra_state": {"meter": _TrainerMeter()},
             "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(2)}}}}
    torch.save(state, tmp_path / "ckpt.pt")
    out = load_checkpoint(tmp_path / "ckpt.pt")
    assert torch.equal(out["model"]["w"], state["model"]["w"])
    read = plain(out["args"])
    assert read["arch"] == "ofa_tiny" and read["encoder_layers"] == 4 and read["lr"] == [1e-4]
    assert plain(out["extra_state"]["meter"]) == {"avg": 1.5}  # a foreign class: only its state, as data


def test_plain_state_dict_takes_the_weights_only_path(tmp_path):
    torch.save({"a": torch.ones(3), "args": argparse.Namespace(x=1)}, tmp_path / "ok.pt")
    out = load_checkpoint(tmp_path / "ok.pt")
    assert isinstance(out["args"], argparse.Namespace) and out["args"].x == 1


def test_omegaconf_like_containers_read_as_dicts():
    node = Inert.__new__(type("Inert[omegaconf.nodes.AnyNode]", (Inert,), {"qualname": "omegaconf.nodes.AnyNode"}))
    node.__setstate__({"_val": 768})
    cfg = Inert.__new__(type("Inert[omegaconf.dictconfig.DictConfig]", (Inert,),
                             {"qualname": "omegaconf.dictconfig.DictConfig"}))
    cfg.__setstate__({"_content": {"encoder_embed_dim": node}, "_metadata": None})
    assert plain(cfg) == {"encoder_embed_dim": 768}


@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "missing"])
def test_broken_files_are_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad.pt"
    torch.save({"w": torch.ones(1000)}, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(SpecError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
