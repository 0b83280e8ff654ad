"""Pareto front, pick and Learn-then-Test on tiny hand-made frames."""

import numpy as np
import pandas as pd
import pytest

from mue_bench.analysis.pareto import pareto_front
from mue_bench.analysis.pick import candidates, pick
from mue_bench.analysis.risk import hb_p_value, learn_then_test


def frame(rows):
    return pd.DataFrame(rows, columns=["point_id", "tau_img", "tau_txt", "tau_dec", "layer_savings", "quality_rel"]
                        ).assign(status="ok", flop_savings=lambda d: d["layer_savings"])


def test_front_drops_dominated_points_and_sorts_by_saving():
    df = frame([("full", 2, 2, 2, 0.0, 1.0), ("a", .9, .9, .9, 0.3, 0.99), ("b", .8, .8, .8, 0.5, 0.9),
                ("dominated", .85, .9, .9, 0.2, 0.95)])
    assert pareto_front(df)["point_id"].tolist() == ["full", "a", "b"]


def test_front_keeps_one_of_duplicates_the_most_conservative():
    df = frame([("eager", .7, .7, .7, 0.3, 0.99), ("careful", .9, .9, .9, 0.3, 0.99)])
    assert pareto_front(df)["point_id"].tolist() == ["careful"]


def test_front_with_equal_saving_keeps_the_better_quality():
    df = frame([("worse", .7, .7, .7, 0.3, 0.9), ("better", .9, .9, .9, 0.3, 0.95)])
    assert pareto_front(df)["point_id"].tolist() == ["better"]


def test_front_of_a_single_point_and_failed_points_are_ignored():
    df = frame([("only", 2, 2, 2, 0.0, 1.0), ("broken", .5, .5, .5, 0.9, 1.0)])
    df.loc[1, "status"] = "failed"
    assert pareto_front(df)["point_id"].tolist() == ["only"]


def test_pick_takes_the_largest_saving_within_budget_exactly_met():
    df = frame([("full", 2, 2, 2, 0.0, 1.0), ("meets", .9, .9, .9, 0.4, 0.99), ("misses", .8, .8, .8, 0.6, 0.9899)])
    assert pick(df, 0.99)["point_id"] == "meets"


def test_pick_returns_none_when_nothing_meets_the_budget():
    df = frame([("a", .9, .9, .9, 0.4, 0.8)])
    assert pick(df, 0.99) is None and candidates(df, 0.99).empty


def test_pick_ties_go_to_the_more_conservative_thresholds():
    df = frame([("eager", .7, .9, .9, 0.4, 0.99), ("careful", .9, .9, .9, 0.4, 0.99)])
    assert pick(df, 0.95)["point_id"] == "careful"


def test_hb_p_value_is_small_when_the_observed_risk_is_far_below_delta():
    assert hb_p_value(0.0, 1000, 0.1) < 1e-10
    assert hb_p_value(0.1, 1000, 0.1) > 0.05
    assert hb_p_value(0.3, 1000, 0.1) == 1.0


def test_ltt_stops_at_the_first_failure_along_the_path():
    losses = {"p0": np.zeros(500), "p1": np.r_[np.zeros(490), np.ones(10)], "p2": np.ones(500) * 0.5,
              "p3": np.zeros(500)}
    res = learn_then_test(["p0", "p1", "p2", "p3"], losses, delta=0.1, epsilon=0.05)
    assert res.chosen == "p1"
    assert res.table["accepted"].tolist() == [True, True, False, False]


def test_ltt_controls_the_risk_in_simulation(capsys):
    """A known true-risk curve along the path; over 200 seeded draws the returned point's true risk
    exceeds delta in at most about epsilon of them."""
    true_risk = np.linspace(0.0, 0.3, 31)
    delta, eps, n = 0.1, 0.1, 400
    path = [f"p{i}" for i in range(len(true_risk))]
    violations = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        losses = {p: (rng.random(n) < r).astype(float) for p, r in zip(path, true_risk)}
        chosen = learn_then_test(path, losses, delta, eps).chosen
        if chosen is not None and true_risk[path.index(chosen)] > delta:
            violations += 1
    rate = violations / 200
    print(f"LTT simulation: violation rate {rate:.3f} (epsilon {eps})")
    assert rate <= eps + 0.03
    with capsys.disabled():
        print(f"\nLTT simulation over 200 seeds: risk > delta at the returned point in {rate:.1%} (epsilon {eps:.0%})")


@pytest.mark.parametrize("budget", [0.95, 0.99])
def test_candidates_are_sorted_best_first(budget):
    df = frame([("a", .9, .9, .9, 0.1, 1.0), ("b", .8, .9, .9, 0.3, 0.995), ("c", .7, .9, .9, 0.2, 0.999)])
    got = candidates(df, budget)["layer_savings"].tolist()
    assert got == sorted(got, reverse=True)


def test_dominated_area_of_a_staircase():
    from mue_bench.analysis.pareto import dominated_area

    df = frame([("full", 2, 2, 2, 0.0, 1.0), ("a", .9, .9, .9, 0.5, 0.8), ("b", .8, .8, .8, 1.0, 0.5),
                ("dominated", .9, .8, .8, 0.4, 0.7)])
    assert dominated_area(df) == pytest.approx(0.5 * 0.8 + 0.5 * 0.5)
