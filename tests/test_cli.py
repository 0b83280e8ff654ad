"""The commands, through Typer's CliRunner."""

from typer.testing import CliRunner

from mue_bench.cli import app
from tests.test_sweep import write_spec

runner = CliRunner()


def test_dry_run_lists_the_grid_and_writes_nothing(tmp_path, shapes_root, random_checkpoint):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["sweep", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "full-split" in result.output and "5 grid points" in result.output
    assert not (tmp_path / "results").exists()


def test_sweep_prints_a_summary_and_writes_both_files(tmp_path, shapes_root, random_checkpoint):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["sweep", str(spec), "--limit", "2", "--no-meteor"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "full model" in result.output and "best ≥99% quality" in result.output
    assert (tmp_path / "results" / "t.parquet").is_file() and (tmp_path / "results" / "t.samples.parquet").is_file()
    again = runner.invoke(app, ["sweep", str(spec), "--limit", "2", "--no-meteor"], terminal_width=200)
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
    assert "kv_fill" in result.output and "Traceback" not in result.output


def test_missing_checkpoint_is_named(shapes_root, tmp_path):
    result = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope"), "--data-root", str(shapes_root),
                                 "--limit", "1"])
    assert result.exit_code == 1
    assert "checkpoint file not found" in result.output
