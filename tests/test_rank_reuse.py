"""Rank-mode grid reuse (decoding.mode = "rank", timing.batches): the untimed batches share one encoder result per
encoder setting and a stored ranking pass serves every tau_dec that makes its decisions the same way, and come out
exactly as if every point ran in full, for fewer layer executions."""

from __future__ import annotations

import json

import pytest

from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import load_spec
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_rank_spec import _spec
from tests.test_ofa_sweep import _folder

TAU_IMG = [0.5, 0.9, 2.0]
# on this random model's pass similarities (about 0.39-0.44 after layer 1, 0.68-0.70 after 2, 0.862-0.871 after
# 3), 0.42, 0.69 and 0.866 split the samples; 0.8 and 0.85 make the same decisions, so do 0.95 and no exit
TAU_DEC = [0.3, 0.42, 0.69, 0.8, 0.85, 0.866, 0.95, 2.0]


@pytest.fixture(scope="module")
def ofa_folder(tmp_path_factory, bpe_dir):  # noqa: F811
    return _folder(tmp_path_factory.mktemp("ofa-tok"), bpe_dir)


def _annotations(tmp_path, shapes_root, n: int):
    rows = [json.loads(line) for line in (shapes_root / "snli_ve_test.jsonl").read_text().splitlines()][:n]
    path = tmp_path / "snli_ve_test.jsonl"
    path.write_text("".join(json.dumps(r | {"sentence1": f"A-man/{i} dogs"}) + "\n" for i, r in enumerate(rows)))
    return path


def _sweep(tmp_path, shapes_root, folder, scope: str, head: bool, batches: int | None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = _spec(tmp_path, _annotations(tmp_path, shapes_root, 6), shapes_root / "images", folder,
                 'add_caption = true\nprompt_type = "prev_output"')
    spec = load_spec(path)
    grid = spec.grid.model_copy(update={"tau_img": TAU_IMG, "tau_txt": [0.7], "tau_dec": TAU_DEC,
                                        "exit_scope": [scope], "head_every_layer": [head]})
    spec = spec.model_copy(update={"grid": grid, "timing": spec.timing.model_copy(update={"batches": batches})})
    return run_sweep(spec, SweepOptions(meteor=False, fresh=True))


@pytest.mark.parametrize("scope,head", [("sample", False), ("batch", False), ("sample", True)])
def test_rank_reuse_equals_every_point_run_in_full_for_fewer_layers(tmp_path, shapes_root, ofa_folder, scope, head,
                                                                    monkeypatch):
    from mue_bench.mue.rank import RankEngine

    made = []
    make = RankEngine.grid_reuse
    monkeypatch.setattr(RankEngine, "grid_reuse", lambda self: made.append(make(self)) or made[-1])
    full = _sweep(tmp_path / "full", shapes_root, ofa_folder, scope, head, None)
    assert not made
    reused = _sweep(tmp_path / "reused", shapes_root, ofa_folder, scope, head, 1)
    key = ["point_id", "sample_index"]
    cols = [*key, "batch_index", "prediction", "tokens", "enc_img_layers", "enc_txt_layers", "dec_layers",
            "layers_used", "flops", "enc_img_sims", "enc_txt_sims", "dec_sims"]
    a, b = (o.samples[cols].sort_values(key).reset_index(drop=True) for o in (full, reused))
    assert len(a) == len(b) == 6 * (1 + len(TAU_IMG) * len(TAU_DEC))
    for col in cols:  # exactly: the whole batch's pass, on the same encoder output
        assert a[col].astype(str).equals(b[col].astype(str)), col
    assert a["batch_index"].max() == 2 and reused.samples["latency_s"].isna().any()
    # exits vary across the grid, so there is something to share and something not to
    assert a["dec_layers"].astype(str).nunique() > 2 and a["enc_img_layers"].nunique() > 1
    if scope == "sample":  # samples of one batch exit at different layers
        assert a.groupby(["point_id", "batch_index"])["dec_layers"].apply(lambda c: len({x[0] for x in c}) > 1).any()
    assert len(made) == 1 and made[0].certified["passes"] > 0, [m.certified for m in made]
    assert reused.layer_executions < 0.8 * full.layer_executions, (reused.layer_executions, full.layer_executions)
