"""Every spec and recipe the repository ships loads (or, where it names a checkpoint folder the user makes first,
fails on that folder alone), so none rots unnoticed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mue_bench.errors import SpecError
from mue_bench.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "sweeps").glob("*.toml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_loads_or_only_misses_its_checkpoint_folder(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        spec = load_spec(path)
    except SpecError as e:
        assert "model.checkpoint" in str(e) and "checkpoints/" in str(e), e
        return
    assert spec.points() and spec.name == path.stem


@pytest.mark.parametrize("name", ["finetune-ofa-base-coco", "finetune-ofa-base-snli-ve"])
def test_the_ofa_recipes_take_checkpoint_and_data_from_the_recipes_folder(name, tmp_path, monkeypatch):
    from mue_bench.training import expand_recipe

    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / f"{name}.json", tmp_path / "recipes")
    checkpoint = json.loads((ROOT / "recipes" / f"{name}.json").read_text())["stages"][0]["model"]["checkpoint"]
    folder = (tmp_path / "recipes" / checkpoint).resolve()
    folder.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (folder / f).write_text("")
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    trainer, [cfg] = expand_recipe(tmp_path / "recipes" / f"{name}.json")
    # OFA's caption runs smooth labels by 0.1; the authors' SNLI-VE run does not, and trains on its ranked prompt
    assert trainer == "finetune" and cfg.loss == "layerwise" and cfg.label_smoothing == (0.0 if "snli" in name else 0.1)
    if "snli" in name:
        assert cfg.model.add_caption and cfg.model.prompt_type == "prev_output" and cfg.data.dataset == "snli-ve-tsv"
        assert cfg.answers == ("no", "yes", "maybe")  # the loss sees the answer trie, as the authors' criterion
    else:
        assert cfg.answers == ()
    assert (work / cfg.model.checkpoint).resolve() == folder
    assert (work / cfg.data.annotations).resolve().parent.parent == tmp_path / "data"
