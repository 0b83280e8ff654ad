"""The commands, through Typer's CliRunner."""

from typer.testing import CliRunner

from mue_bench.cli import app
from tests.fakes import FakeEngine, FakeTimer, fake_loader
from tests.test_sweep import write_spec

runner = CliRunner()


def test_dry_run_lists_the_grid_and_writes_nothing(tmp_path, shapes_root, random_checkpoint):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["sweep", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "full-split" in result.output and "5 grid points" in result.output
    assert not (tmp_path / "results").exists()


def _fake(fail: set[str] = frozenset()) -> dict:
    """run_sweep's dependencies for a fake model, handed to the command through Click's context object."""
    engine = FakeEngine(fail=set(fail))
    return {"load": fake_loader(engine), "timer": FakeTimer(engine)}


def test_sweep_prints_a_summary_and_writes_both_files(tmp_path, shapes_root, random_checkpoint):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint, task="entailment")
    result = runner.invoke(app, ["sweep", str(spec), "--limit", "2"], terminal_width=200, obj=_fake())
    assert result.exit_code == 0, result.output
    assert "full model" in result.output and "best ≥99% quality" in result.output
    assert (tmp_path / "results" / "t.parquet").is_file() and (tmp_path / "results" / "t.samples.parquet").is_file()
    again = runner.invoke(app, ["sweep", str(spec), "--limit", "2"], terminal_width=200, obj=_fake())
    assert "0 computed, 5 reused" in again.output


def test_eval_reports_one_point_against_the_full_model(shapes_root, random_checkpoint):
    result = runner.invoke(app, ["eval", "--checkpoint", str(random_checkpoint), "--data-root", str(shapes_root),
                                 "--limit", "2", "--task", "entailment", "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "full model" in result.output and "img=0.99-txt=0.7-dec=0.9" in result.output


def test_eval_with_a_bad_option_is_one_line(shapes_root, random_checkpoint):
    result = runner.invoke(app, ["eval", "--checkpoint", str(random_checkpoint), "--data-root", str(shapes_root),
                                 "--kv-fill", "smear"])
    assert result.exit_code == 2
    assert "--kv-fill: " in result.output and "Traceback" not in result.output


def test_eval_names_the_option_not_the_spec_field_it_fills(shapes_root, random_checkpoint):
    for option, value in (("--img", "5"), ("--txt", "nan"), ("--dec", "-3"), ("--num-beams", "0"), ("--task", "x"),
                          ("--encoder-mode", "x"), ("--dec-schedule", "x"), ("--data-version", "7")):
        result = runner.invoke(app, ["eval", "--checkpoint", str(random_checkpoint), "--data-root", str(shapes_root),
                                     option, value])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: {option}: ") and "grid." not in lines[0], lines[0]


def test_missing_checkpoint_is_named_before_any_work(shapes_root, tmp_path):
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope"), "--data-root", str(shapes_root),
                                 "--limit", "1"])
    assert result.exit_code == 2
    assert "--checkpoint" in result.output and "nope" in result.output


def _swept(tmp_path, shapes_root, random_checkpoint, split="test", name="t"):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint, name)
    spec.write_text(spec.read_text().replace('split = "test"', f'split = "{split}"'))
    result = runner.invoke(app, ["sweep", str(spec), "--no-meteor"])
    assert result.exit_code == 0, result.output
    return tmp_path / "results" / f"{name}.parquet"


def test_pick_json_names_the_largest_saving_within_budget(tmp_path, shapes_root, random_checkpoint):
    import json

    import pandas as pd

    results = _swept(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["pick", str(results), "--budget", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.output)["chosen"]
    points = pd.read_parquet(results)
    assert chosen["layer_savings"] == points.loc[points["quality_rel"] >= 0.5, "layer_savings"].max()
    assert chosen["layer_savings_lo"] <= chosen["layer_savings"] <= chosen["layer_savings_hi"]


def test_a_budget_outside_0_to_1_is_a_bad_option(tmp_path, shapes_root, random_checkpoint):
    results = _swept(tmp_path, shapes_root, random_checkpoint)
    for command in (["pick", str(results)], ["plot", str(results), "--out", str(tmp_path / "plots")],
                    ["check", str(results), "--baseline", str(results)]):
        for budget in ("-1", "0", "2", "nan"):
            result = runner.invoke(app, [*command, "--budget", budget])
            lines = [ln for ln in result.output.splitlines() if ln.strip()]
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert f"--budget {budget}: a budget is a fraction of the full model's quality" in lines[0]
    assert not (tmp_path / "plots").exists()


def test_pick_exits_1_when_no_point_meets_the_budget(tmp_path, shapes_root, random_checkpoint):
    # Any budget in (0, 1] is met by the full model itself, unless its quality is 0 and no quality_rel exists.
    import pandas as pd

    results = _swept(tmp_path, shapes_root, random_checkpoint)
    points = pd.read_parquet(results)
    points.assign(quality_full=0.0, quality_rel=float("nan")).to_parquet(results)
    result = runner.invoke(app, ["pick", str(results), "--budget", "0.99"])
    assert result.exit_code == 1 and "no point keeps quality_rel ≥ 0.99" in result.output


def test_a_risk_pick_that_certifies_nothing_exits_1(tmp_path, shapes_root, random_checkpoint):
    # 4 calibration samples cannot show a risk below 1% at 95% confidence, not even for the full model
    results = _swept(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["pick", str(results), "--risk", "0.01", "--calibration-split", "test"])
    assert result.exit_code == 1 and "no point passes: keep the full model" in result.output


def test_risk_controlled_pick_calibrates_on_one_split_and_verifies_on_another(tmp_path, shapes_root,
                                                                             random_checkpoint):
    import json

    val = _swept(tmp_path, shapes_root, random_checkpoint, "val", "cal")
    test = _swept(tmp_path, shapes_root, random_checkpoint, "test", "ver")
    result = runner.invoke(app, ["pick", str(val), str(test), "--risk", "0.5", "--confidence", "0.9",
                                 "--calibration-split", "val", "--verify", "test", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["chosen"] is not None and out["path"][0]["point_id"] == "full-split"
    assert out["path"][0]["accepted"] and "realised_risk" in out["path"][0]
    missing = runner.invoke(app, ["pick", str(val), "--risk", "0.5", "--calibration-split", "train"])
    assert missing.exit_code == 2 and "split 'train'" in missing.output


def test_plot_writes_png_and_svg_for_every_figure(tmp_path, shapes_root, random_checkpoint):
    results = _swept(tmp_path, shapes_root, random_checkpoint)
    out = tmp_path / "plots"
    result = runner.invoke(app, ["plot", str(results), str(results), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    for stem in ("tradeoff-layer-quality_rel", "realization", "heatmap-quality_rel", "exit-histograms"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    bad = runner.invoke(app, ["plot", str(results), "--saving", "joules"])
    assert bad.exit_code == 2 and "--saving must be" in bad.output


def test_check_passes_on_identical_results_and_fails_on_doctored_quality(tmp_path, shapes_root, random_checkpoint):
    import pandas as pd

    results = _swept(tmp_path, shapes_root, random_checkpoint)
    same = runner.invoke(app, ["check", str(results), "--baseline", str(results), "--budget", "0.5"])
    assert same.exit_code == 0, same.output
    assert "passed" in same.output
    points = pd.read_parquet(results)
    chosen = json_pick(results, 0.5)
    doctored = points.copy()
    doctored.loc[doctored["point_id"] == chosen, "quality_rel"] = -1.0
    path = tmp_path / "doctored.parquet"
    doctored.to_parquet(path)
    bad = runner.invoke(app, ["check", str(path), "--baseline", str(results), "--budget", "0.5",
                              "--report", str(tmp_path / "summary.md")])
    assert bad.exit_code == 1
    assert "| quality_rel |" in bad.output and "**FAIL**" in bad.output and "-1.0000" in bad.output
    assert "**FAIL**" in (tmp_path / "summary.md").read_text()


def json_pick(results, budget):
    import json

    return json.loads(runner.invoke(app, ["pick", str(results), "--budget", str(budget), "--json"]).output)[
        "chosen"]["point_id"]


def test_continue_on_error_records_the_failure_runs_the_rest_and_exits_1(tmp_path, shapes_root, random_checkpoint):
    import pandas as pd

    spec = write_spec(tmp_path, shapes_root, random_checkpoint, task="entailment")
    failing = "img=0.5-txt=0.9-dec=0.3-split-copy-constant"
    result = runner.invoke(app, ["sweep", str(spec), "--continue-on-error"], obj=_fake({failing}))
    assert result.exit_code == 1
    assert f"1 point(s) failed: {failing}" in result.output
    points = pd.read_parquet(tmp_path / "results" / "t.parquet").set_index("point_id")
    failed = points.loc[failing]
    assert failed.status == "failed" and "CUDA out of memory" in failed.error
    assert (points["status"] == "ok").sum() == 4

    without_flag = runner.invoke(app, ["sweep", str(spec)], obj=_fake({failing}))
    assert without_flag.exit_code == 1  # the failing point is retried, and fails again without the flag
    assert f"grid point {failing} failed: RuntimeError" in without_flag.output
    assert "Traceback" not in without_flag.output

    healed = runner.invoke(app, ["sweep", str(spec)], obj=_fake())
    assert healed.exit_code == 0 and "1 computed, 4 reused" in healed.output


def test_calibrate_grid_proposes_thresholds_within_the_observed_similarities(tmp_path, shapes_root,
                                                                            random_checkpoint):
    import tomllib

    spec = write_spec(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["calibrate-grid", str(spec), "--samples", "3", "--percentile", "25",
                                 "--percentile", "75"])
    assert result.exit_code == 0, result.output
    grid = tomllib.loads(result.output)["grid"]
    for key in ("tau_img", "tau_txt", "tau_dec"):
        assert 1 <= len(grid[key]) <= 2 and all(-1 <= t <= 1 for t in grid[key])
        assert grid[key] == sorted(grid[key])


def test_every_command_is_a_thin_wrapper_of_at_most_25_lines():
    import ast
    import inspect

    for command in app.registered_commands:
        source = inspect.getsource(command.callback)
        node = ast.parse(source).body[0]
        assert node.end_lineno - node.lineno + 1 <= 25, f"{command.callback.__name__}: {node.end_lineno} lines"


def test_outside_a_terminal_progress_is_one_line_per_finished_point(tmp_path, shapes_root, random_checkpoint):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint, task="entailment")
    result = runner.invoke(app, ["sweep", str(spec)], obj=_fake())
    lines = [ln for ln in result.output.splitlines() if ln.startswith("[")]
    assert [ln.split()[0] for ln in lines] == [f"[{i}/5]" for i in range(1, 6)], result.output
    assert all("done" in ln and "eta" in ln for ln in lines)
