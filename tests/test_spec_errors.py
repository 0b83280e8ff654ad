"""A bad spec gets one line naming the problem, exit code 2, no traceback and no output file."""

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.spec import load_spec

runner = CliRunner()


def _spec(tmp_path: Path, shapes_root: Path, checkpoint: Path, **replace: str) -> Path:
    body = textwrap.dedent(f"""
        name = "bad"
        [model]
        family = "mue-tiny"
        checkpoint = "{checkpoint}"
        [data]
        dataset = "shapes"
        root = "{shapes_root}"
        split = "test"
        limit = 2
        [grid]
        tau_img = [0.9]
        tau_txt = [0.9]
        tau_dec = [0.9]
        [output]
        dir = "{tmp_path / 'results'}"
    """)
    for old, new in replace.items():
        assert old in body, old
        body = body.replace(old, new)
    path = tmp_path / "spec.toml"
    path.write_text(body)
    return path


CASES = {
    "unknown field": ({'limit = 2': 'limit = 2\nlimmit = 3'}, "data.limmit: unknown field"),
    "wrong type": ({'limit = 2': 'limit = "two"'}, "data.limit"),
    "threshold outside [-1, 2]": ({'tau_dec = [0.9]': 'tau_dec = [2.5]'}, "outside [-1, 2]"),
    "unknown shapes version": ({'limit = 2': 'limit = 2\nversion = 9'}, "data.version"),
    "empty grid": ({'tau_img = [0.9]': 'tau_img = []'}, "grid.tau_img: empty threshold list"),
    "unknown model family": ({'family = "mue-tiny"': 'family = "gpt5"'}, "model.family"),
    "unknown exit sync": ({'[output]': '[timing]\nexit_sync = "sometimes"\n[output]'}, "timing.exit_sync"),
    "missing dataset path": ({'dataset = "shapes"': 'dataset = "coco-karpathy"\nannotations = "/nope/x.json"\n'
                                                    'images = "/nope"\ntask = "caption"'},
                             "dataset file not found: /nope/x.json"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(case, tmp_path, shapes_root, random_checkpoint):
    replace, expected = CASES[case]
    path = _spec(tmp_path, shapes_root, random_checkpoint, **replace)
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_unreadable_image_is_named(tmp_path, shapes_root, random_checkpoint):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    victim = sorted((root / "images").glob("*.png"))[-1]  # test split images come last
    victim.write_bytes(b"not a png")
    path = _spec(tmp_path, root, random_checkpoint, **{"limit = 2": "limit = 8"})
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert f"image unreadable: {victim}" in result.output.replace("\n", "")
    assert not (tmp_path / "results").exists()


def test_missing_spec_file(tmp_path):
    result = runner.invoke(app, ["sweep", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "spec file not found" in result.output


def test_specs_are_data_not_code(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('name = "__import__(\'os\').system(\'false\')"\n')
    with pytest.raises(Exception, match="name"):
        load_spec(path)


def test_ranges_expand_and_full_model_comes_first(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n[grid]\ntau_img = {start = 0.9, stop = 1.0, step = 0.05}\n'
                    'tau_txt = [0.9]\ntau_dec = [2.0, 0.8]\n')
    spec = load_spec(path)
    from mue_bench.mue.config import point_id

    ids = [point_id(p) for p in spec.points()]
    assert ids[0] == "full-freeze"  # freeze by default: exact for joint encoders
    assert "img=0.95-txt=0.9-dec=0.8-freeze-copy-constant" in ids
    assert len(ids) == len(set(ids)) == 1 + 3 * 2


def test_each_shapes_version_has_its_own_default_folder():
    from mue_bench.data.shapes import DEFAULT_VERSION
    from mue_bench.spec import DataSpec

    assert DataSpec().root == f"data/shapes-v{DEFAULT_VERSION}" and DataSpec(version=3).root == "data/shapes-v3"
    assert DataSpec(root="elsewhere", version=2).root == "elsewhere"


BAD_CHECKPOINTS = {
    "unknown built-in name": ("mue-tiny", "mue-tinny", "neither a built-in checkpoint"),
    "missing folder": ("mue-tiny", "/nope/ckpt", "neither a built-in checkpoint"),
    "missing folder, transformers family": ("florence2", "./nope/ckpt", "folder ./nope/ckpt not found"),
    "unknown random shape": ("florence2", "random:huge", "unknown random shape 'huge' for florence2"),
    "random weights of the built-in family": ("mue-tiny", "random:tiny", "random weights exist for"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_when_the_spec_loads_before_any_data_is_made(case, tmp_path):
    family, checkpoint, expected = BAD_CHECKPOINTS[case]
    never = tmp_path / "data-never-made"
    path = tmp_path / "spec.toml"
    path.write_text(f'name = "bad"\n[model]\nfamily = "{family}"\ncheckpoint = "{checkpoint}"\n'
                    f'[data]\nroot = "{never}"\n[output]\ndir = "{tmp_path / "results"}"\n')
    result = runner.invoke(app, ["sweep", str(path)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "model.checkpoint" in lines[0] and expected in lines[0], result.output
    assert not never.exists() and not (tmp_path / "results").exists()


def test_checkpoint_strings_parse_into_one_typed_value(tmp_path):
    from mue_bench.spec import BUILTIN_DIR, Checkpoint, ModelSpec

    assert ModelSpec().resolved == Checkpoint("builtin", "mue-tiny")
    assert ModelSpec().resolved.path == BUILTIN_DIR / "mue-tiny"
    assert ModelSpec(family="florence2", checkpoint="org/model").resolved == Checkpoint("hub", "org/model")
    assert ModelSpec(family="t5gemma2", checkpoint="random:270m").resolved == Checkpoint("random", "270m")
    assert ModelSpec(family="florence2", checkpoint=str(tmp_path)).resolved == Checkpoint("folder", str(tmp_path))


RANGES = {
    "stop = inf": ("{start = 0.9, stop = inf, step = 0.01}", "tau_dec.stop"),
    "step = 0": ("{start = 0.9, stop = 0.99, step = 0}", "step must be > 0"),
    "stop below start": ("{start = 0.99, stop = 0.9, step = 0.01}", "stop 0.9 is below start 0.99"),
    "a step that makes millions of thresholds": ("{start = 0.9, stop = 1.0, step = 1e-7}", "is the step a typo?"),
    "a grid of 848k points": ("{start = -1, stop = 1, step = 0.005}\ntau_img = {start = -1, stop = 1, step = 0.1}\n"
                              "tau_txt = {start = -1, stop = 1, step = 0.01}", "raise grid.max_points"),
    "a negative fixed exit": ("[0.9]\nfixed_exit = [[-5, 99999999999, 0]]", "grid.fixed_exit"),
}


@pytest.mark.parametrize("case", RANGES, ids=list(RANGES))
def test_an_unsound_range_is_one_line_even_for_a_dry_run(case, tmp_path):
    text, expected = RANGES[case]
    path = tmp_path / "r.toml"
    path.write_text(f'name = "r"\n[grid]\ntau_dec = {text}\n')
    result = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.output


def test_a_spec_that_is_not_utf8_or_is_a_folder_is_one_line(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    for path, expected in ((latin, "not UTF-8"), (tmp_path, "is a folder")):
        result = runner.invoke(app, ["sweep", str(path), "--dry-run"])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("device", ["cuda:7", "tpu"])
def test_a_device_this_machine_cannot_give_is_bad_input(device):
    from mue_bench.errors import SpecError
    from mue_bench.models.registry import resolve_device

    with pytest.raises(SpecError):
        resolve_device(device)


def _damage_truncated(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _damage_config(d):
    (d / "config.json").write_text("{not json")


def _damage_shapes(d):
    import json

    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"d_ff": cfg["d_ff"] * 2}))


def _damage_bin_only(d):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


DAMAGED_CHECKPOINTS = {
    "truncated safetensors": (_damage_truncated, "model.safetensors: not a readable safetensors file"),
    "malformed config.json": (_damage_config, "config.json: not a mue-tiny config"),
    "shapes that do not match the config": (_damage_shapes, "has shape"),
    "a pytorch_model.bin only": (_damage_bin_only, "has no model.safetensors (mue-tiny checkpoints are safetensors)"),
}


@pytest.mark.parametrize("case", DAMAGED_CHECKPOINTS, ids=list(DAMAGED_CHECKPOINTS))
def test_a_damaged_checkpoint_is_one_line_naming_the_file(case, tmp_path, shapes_root, random_checkpoint):
    import shutil

    damage, expected = DAMAGED_CHECKPOINTS[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(random_checkpoint, ckpt)
    damage(ckpt)
    result = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data-root", str(shapes_root), "--limit", "1",
                                 "--task", "entailment"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and expected in result.output.replace("\n", "") and "Traceback" not in result.output
