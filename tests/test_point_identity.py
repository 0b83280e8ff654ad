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
