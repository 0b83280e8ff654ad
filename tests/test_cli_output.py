"""What the commands print for people and for scripts: JSON with documented keys, progress lines in logs,
--quiet / --verbose, --version, and help text without markup accidents."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from tests.fakes import FakeEngine, FakeTimer, fake_loader
from tests.test_sweep import write_spec

runner = CliRunner()


def _fake() -> dict:
    engine = FakeEngine()
    return {"load": fake_loader(engine), "timer": FakeTimer(engine)}


@pytest.fixture
def entailment_spec(tmp_path, shapes_root, random_checkpoint):
    return write_spec(tmp_path, shapes_root, random_checkpoint, task="entailment")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("mue-bench ")


def test_help_is_plain_text_with_no_type_noise():
    for args in (["--help"], ["sweep", "--help"], ["pick", "--help"]):
        out = runner.invoke(app, args).output
        assert "<bool>" not in out and "╭" not in out, out


@pytest.mark.parametrize(("args", "names"), [
    (["sweep", "--bogus"], ["mue-bench sweep", "--bogus", "mue-bench sweep --help"]),
    (["pick"], ["mue-bench pick", "results"]),
    (["sweep", "--limit", "0"], ["--limit", "greater than or equal to 1"]),
    (["nosuch"], ["mue-bench", "nosuch"]),
    (["sweep", "--quiet", "--verbose"], ["--quiet", "--verbose"]),
])
def test_a_usage_error_is_one_line_naming_the_command_and_option_exit_2(args, names):
    result = runner.invoke(app, args, prog_name="mue-bench")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for name in names:
        assert name in lines[0]


def test_a_bare_command_line_still_shows_the_help():
    assert "Commands:" in runner.invoke(app, []).output


def test_sweep_json_carries_the_summary(entailment_spec):
    result = runner.invoke(app, ["sweep", str(entailment_spec), "--json"], obj=_fake())
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"spec", "results", "samples", "points", "n", "computed", "reused", "failed", "full", "best", "wall_s",
            "reference_s", "timing_warning"} <= set(data)
    assert data["points"] == 5 and len(data["computed"]) == 5 and data["failed"] == []
    assert data["full"]["is_full"] and data["full"]["quality_rel"] == 1.0
    assert set(data["best"]) == {"0.99", "0.95"}


def test_dry_run_json_lists_every_point(entailment_spec):
    result = runner.invoke(app, ["sweep", str(entailment_spec), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_points"] == 5 == len(data["points"])
    assert {"point_id", "tau_img", "tau_txt", "tau_dec", "encoder_mode", "kv_fill", "dec_schedule",
            "fixed_exit", "is_full"} == set(data["points"][0])


def test_log_progress_names_each_point_with_its_savings(entailment_spec):
    result = runner.invoke(app, ["sweep", str(entailment_spec)], obj=_fake())
    lines = [ln for ln in result.output.splitlines() if ln.startswith("[")]
    assert len(lines) == 5
    assert all("n=4" in ln and "layer sav." in ln and "eta" in ln for ln in lines), lines
    assert "layer sav. 0.0%" in lines[0]  # the full model, against itself


def test_quiet_prints_no_progress_and_verbose_a_line_as_each_point_starts(entailment_spec, tmp_path):
    quiet = runner.invoke(app, ["sweep", str(entailment_spec), "--quiet"], obj=_fake())
    assert quiet.exit_code == 0 and not [ln for ln in quiet.output.splitlines() if ln.startswith("[")]
    shutil.rmtree(tmp_path / "results")
    verbose = runner.invoke(app, ["sweep", str(entailment_spec), "-v"], obj=_fake())
    assert sum(": 2 batches" in ln for ln in verbose.output.splitlines()) == 5, verbose.output
    both = runner.invoke(app, ["sweep", str(entailment_spec), "-q", "-v"], obj=_fake())
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_check_json_is_the_report_as_data(entailment_spec, tmp_path):
    assert runner.invoke(app, ["sweep", str(entailment_spec)], obj=_fake()).exit_code == 0
    results = tmp_path / "results" / "t.parquet"
    result = runner.invoke(app, ["check", str(results), "--baseline", str(results), "--json", "--budget", "0.5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and {c["name"] for c in data["checks"]} >= {"quality_rel", "layer_savings"}
    assert set(data["checks"][0]) == {"name", "baseline", "current", "limit", "ok"}


def test_eval_and_calibrate_json(shapes_root, random_checkpoint, tmp_path):
    ev = runner.invoke(app, ["eval", "--checkpoint", str(random_checkpoint), "--data-root", str(shapes_root),
                             "--limit", "2", "--task", "entailment", "--device", "cpu", "--json", "-q"])
    assert ev.exit_code == 0, ev.output
    points = json.loads(ev.stdout)["points"]
    assert len(points) == 2 and sum(p["is_full"] for p in points) == 1 and points[0]["n"] == 2
    spec = write_spec(tmp_path, shapes_root, random_checkpoint)
    cal = runner.invoke(app, ["calibrate-grid", str(spec), "--samples", "2", "--json"])
    assert cal.exit_code == 0, cal.output
    data = json.loads(cal.stdout)
    assert {"percentiles", "tau_img", "tau_txt", "tau_dec", "samples"} == set(data) and data["samples"] == 2
