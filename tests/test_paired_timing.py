"""Paired timing: time savings from per-pair ratios with an interval, and the drift alarm (no wall clock read)."""

import numpy as np
import pytest

from mue_bench.scoring.paired import DRIFT_LIMIT, Pairs, drift, drift_warning, paired_saving


def _pairs(point_s, ref_s, batch=None) -> Pairs:
    n = len(point_s)
    return Pairs(np.asarray(point_s, float), np.asarray(ref_s, float), np.arange(n) % 2 == 0,
                 np.arange(n, dtype=float), np.zeros(n, int) if batch is None else np.asarray(batch))


def test_the_saving_is_one_minus_the_median_ratio_and_its_interval_brackets_it():
    point = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.05]
    ref = [2.0] * 8
    t = paired_saving(_pairs(point, ref))
    assert t.saving == pytest.approx(1 - np.median(np.array(point) / 2.0)) and t.n == 8
    assert t.lo <= t.saving <= t.hi and t.hi - t.lo < 0.15


def test_a_drift_ramp_cancels_in_pairs_where_a_single_reference_would_not():
    # the machine slows down 3x over the sweep; every point is truly twice as fast as the full model
    slowdown = np.linspace(1.0, 3.0, 40)
    t = paired_saving(_pairs(0.5 * slowdown, 1.0 * slowdown))
    assert t.saving == pytest.approx(0.5) and t.lo == pytest.approx(0.5) and t.hi == pytest.approx(0.5)
    unpaired = 1 - np.median(0.5 * slowdown) / 1.0  # the old way: against the full model timed at the start
    assert unpaired < 0.1


def test_noisy_pairs_give_a_wide_interval_not_a_confident_number():
    rng = np.random.default_rng(0)
    quiet = paired_saving(_pairs(0.5 + 0.01 * rng.random(30), np.ones(30)))
    noisy = paired_saving(_pairs(0.5 * np.exp(rng.normal(0, 0.8, 30)), np.ones(30)))
    assert (noisy.hi - noisy.lo) > 10 * (quiet.hi - quiet.lo)


def test_fewer_than_two_pairs_have_no_interval():
    one = paired_saving(_pairs([1.0], [2.0]))
    assert one.saving == 0.5 and np.isnan(one.lo) and np.isnan(one.hi)
    assert np.isnan(paired_saving(_pairs([], [])).saving)


def test_the_drift_alarm_fires_on_a_ramp_and_not_on_flat_noise():
    rng = np.random.default_rng(1)
    batches = np.arange(64) % 4  # four batches of different cost, each timed again and again
    cost = np.array([1.0, 2.0, 4.0, 8.0])[batches]
    flat = _pairs(np.ones(64), cost * np.exp(rng.normal(0, 0.1, 64)), batches)
    ramp = _pairs(np.ones(64), cost * np.linspace(1.0, 1.6, 64), batches)
    assert abs(drift([flat])) < DRIFT_LIMIT and drift_warning(drift([flat])) is None
    assert drift([ramp]) > DRIFT_LIMIT
    assert "slower" in drift_warning(drift([ramp])) and "\n" not in drift_warning(drift([ramp]))
    assert drift([_pairs([1.0] * 4, [1.0] * 4)]) is None  # too few pairs to tell
