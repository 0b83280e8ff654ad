"""Point identity: one function names a grid point, exactly, and a grid never silently loses a point."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mue_bench.errors import SpecError
from mue_bench.mue import config
from mue_bench.mue.config import ExitConfig, format_tau, point_id
from mue_bench.spec import GridSpec, SweepSpec


def _spec(**grid) -> SweepSpec:
    return SweepSpec(name="ids", grid=GridSpec(**grid))


def test_a_fine_decoder_grid_keeps_every_threshold_as_its_own_point():
    spec = _spec(tau_dec={"start": 0.999, "stop": 0.9999, "step": 0.00005})
    grid = [p for p in spec.points() if not p.is_full]
    assert len(grid) == 19
    assert len({p.point_id for p in grid}) == 19
    assert {p.tau_dec for p in grid} == set(spec.grid.tau_dec.values())


@given(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False))
def test_a_threshold_reads_back_from_its_name_as_the_same_float(t):
    assert float(format_tau(t)) == t


def test_ids_keep_their_short_spelling():
    cfg = ExitConfig(0.99, -1.0, 0.9, "freeze")
    assert point_id(cfg) == "img=0.99-txt=-1-dec=0.9-freeze-copy-constant"
    assert point_id(ExitConfig(encoder_mode="split")) == "full-split"
    assert cfg.reference_id == "full-freeze"


def test_thresholds_above_one_are_one_point_not_a_collision():
    spec = _spec(tau_img=[1.5, 2.0], tau_txt=[0.9])
    assert [p.point_id for p in spec.points()] == ["full-freeze", "img=off-txt=0.9-dec=off-freeze-copy-constant"]


def test_distinct_settings_that_would_share_an_id_are_refused_naming_both(monkeypatch):
    monkeypatch.setattr(config, "format_tau", lambda t: "off" if t > 1 else f"{t:.2g}")
    with pytest.raises(SpecError) as err:
        _spec(tau_dec=[0.991, 0.992]).points()
    message = str(err.value)
    assert "\n" not in message and "0.991" in message and "0.992" in message


# Context hashes of shipped specs as results files recorded them before the LATER_CONTEXT_FIELDS existed.
RECORDED_CONTEXT = {"demo.toml": "76b887efee1205a3", "ci.toml": "2285a3f6ba24936e",
                    "florence2-coco.toml": "2dca66c885cccba1", "t5gemma2-coco.toml": "84b768466d9d2432"}


@pytest.mark.parametrize(("name", "recorded"), RECORDED_CONTEXT.items())
def test_a_results_file_from_before_a_later_field_still_matches_its_spec(name, recorded):
    from pathlib import Path

    from mue_bench.spec import load_spec

    assert load_spec(Path("sweeps") / name).context_hash() == recorded


AWAY_FROM_DEFAULT = {"add_caption": True, "prompt_type": "prev_output", "columns": (1, 2), "references": "refs.json",
                     "mode": "rank"}


def test_a_later_field_set_away_from_its_default_changes_the_context():
    from pathlib import Path

    from mue_bench.spec import LATER_CONTEXT_FIELDS, load_spec

    spec = load_spec(Path("sweeps/demo.toml"))
    for section, names in LATER_CONTEXT_FIELDS.items():
        part = getattr(spec, section)
        for name in names:
            assert name in type(part).model_fields, f"{section}.{name} is no field"
            other = spec.model_copy(update={section: part.model_copy(update={name: AWAY_FROM_DEFAULT[name]})})
            assert other.context_hash() != spec.context_hash(), f"{section}.{name}"
