"""Bootstrap intervals from per-sample rows."""

import numpy as np
import pandas as pd

from mue_bench.analysis.bootstrap import bootstrap_intervals


def _samples(pid, correct, layers):
    n = len(correct)
    return pd.DataFrame({"point_id": pid, "sample_index": range(n), "correct": correct, "cider": np.nan,
                         "layers_used": layers, "flops": np.asarray(layers, float) * 10})


def test_intervals_bracket_the_estimate_and_shrink_with_more_samples():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        full_correct = (rng.random(n) < 0.9).astype(float)
        fast_correct = full_correct * (rng.random(n) < 0.95)
        samples = pd.concat([_samples("full-split", full_correct, np.full(n, 18)),
                             _samples("fast", fast_correct, rng.integers(6, 18, n))])
        points = pd.DataFrame({"point_id": ["full-split", "fast"], "reference_id": "full-split", "status": "ok",
                               "encoder_mode": "split", "task": "entailment"})
        ci = bootstrap_intervals(points, samples, n_boot=500).set_index("point_id")
        q = fast_correct.mean() / full_correct.mean()
        assert ci.loc["fast", "quality_rel_lo"] <= q <= ci.loc["fast", "quality_rel_hi"]
        assert ci.loc["full-split", "layer_savings_lo"] == ci.loc["full-split", "layer_savings_hi"] == 0
        widths.append(ci.loc["fast", "layer_savings_hi"] - ci.loc["fast", "layer_savings_lo"])
    assert widths[1] < widths[0] / 2
