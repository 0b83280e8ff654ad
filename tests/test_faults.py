"""Faults of the machine, not of the input: a full disk, too little free space for the results, and a grid point
that runs out of memory. Each is one line and its exit code, nothing half-written, the finished points kept."""

import errno

import pytest
import torch
from typer.testing import CliRunner

import mue_bench.results as results_module
from mue_bench.cli import app
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.run.runner import Progress, SweepOptions
from mue_bench.spec import load_spec
from tests.fakes import FakeEngine, FakeTimer, fake_loader
from tests.test_sweep import _comparable, _fake_sweep, write_spec

runner = CliRunner()


@pytest.fixture
def fake_spec(tmp_path, shapes_root, random_checkpoint):
    """test_sweep's entailment spec for the fake engine: 4 samples, batch size 2, 5 points, no warm-up."""
    return load_spec(write_spec(tmp_path, shapes_root, random_checkpoint, "f", "entailment"))


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def _full_disk(after: int = 0):
    """pq.write_table that fails like a full disk after `after` good writes, leaving a torn file behind."""
    real, calls = results_module.pq.write_table, []

    def write(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) > after:
            with open(where, "wb") as f:
                f.write(b"PAR1 torn")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    return write


def _temp_files(folder):
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def test_a_full_disk_while_writing_a_point_is_one_line_exit_1_and_leaves_no_temp_file(fake_spec, monkeypatch):
    monkeypatch.setattr(results_module.pq, "write_table", _full_disk())
    with pytest.raises(MueBenchError) as caught:
        _fake_sweep(fake_spec)
    part = fake_spec.results_path().with_suffix(".parts") / "full-split.parquet"
    assert str(caught.value) == (f"no space left on device writing {part}; free space or choose another "
                                 "output.dir")
    assert caught.value.exit_code == 1
    assert _temp_files(fake_spec.results_path().parent) == [] and not part.exists()
    assert not fake_spec.results_path().with_suffix(".lock").exists()


def test_a_full_disk_while_writing_the_final_files_keeps_the_parts_and_no_torn_file(fake_spec, monkeypatch):
    n_points = len(fake_spec.points())
    monkeypatch.setattr(results_module.pq, "write_table", _full_disk(after=n_points + 1))  # the points file
    with pytest.raises(MueBenchError, match="no space left on device writing .*f.parquet; free space"):
        _fake_sweep(fake_spec)
    folder = fake_spec.results_path().parent
    assert _temp_files(folder) == []
    assert not fake_spec.results_path().exists() and not fake_spec.samples_path().exists()  # both or neither
    assert len(list(fake_spec.results_path().with_suffix(".parts").glob("*.parquet"))) == n_points
    monkeypatch.undo()
    resumed = _fake_sweep(fake_spec)
    assert resumed.computed == [] and len(resumed.reused) == n_points


def test_a_full_disk_through_the_command_line_is_one_line_exit_1(tmp_path, shapes_root, random_checkpoint,
                                                                 monkeypatch):
    spec = write_spec(tmp_path, shapes_root, random_checkpoint, task="entailment")
    monkeypatch.setattr(results_module.pq, "write_table", _full_disk())
    engine = FakeEngine()
    result = runner.invoke(app, ["sweep", str(spec)], obj={"load": fake_loader(engine), "timer": FakeTimer(engine)})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert _lines(result.output)[-1].startswith("error: no space left on device writing "), result.output


def test_a_sweep_whose_results_clearly_do_not_fit_is_refused_before_any_model_work(fake_spec, monkeypatch):
    class Usage:
        free = 10_000

    seen = []
    monkeypatch.setattr(results_module.shutil, "disk_usage", lambda p: seen.append(p) or Usage())
    engine = FakeEngine()
    with pytest.raises(SpecError, match=r"output.dir .*: 5 grid points x 4 samples need about 51 KB and its "
                                        r"filesystem has 10 KB free; free space, choose another output.dir"):
        _fake_sweep(fake_spec, engine)
    assert engine.runs == [] and not fake_spec.results_path().parent.exists()
    assert seen == [fake_spec.results_path().parent.parent]  # the folder that exists, where it would be made
    Usage.free = 10**9
    assert len(_fake_sweep(fake_spec, engine).computed) == 5


def _at_batch_size(spec, size: int, folder):
    return spec.model_copy(update={"run": spec.run.model_copy(update={"batch_size": size}),
                                   "output": spec.output.model_copy(update={"dir": str(folder)})})


def test_a_point_that_runs_out_of_memory_is_retried_at_half_the_batch_size(fake_spec, tmp_path):
    warnings = []
    out = _fake_sweep(fake_spec, FakeEngine(max_batch=1), progress=Progress(warn=warnings.append))
    assert len(out.computed) == 5 and not out.failed
    assert warnings == ["grid point full-split: out of memory at batch size 2; retrying at 1 (and keeping it for "
                        "the rest of the sweep)"]
    alone = _fake_sweep(_at_batch_size(fake_spec, 1, tmp_path / "at-1"))  # the sweep run at batch size 1
    provenance = ["batch_size", "spec_hash", "context_hash"]
    assert _comparable(out.points).drop(columns=provenance).equals(_comparable(alone.points).drop(columns=provenance))
    assert _comparable(out.samples).equals(_comparable(alone.samples))


def test_batch_sizes_halve_down_to_the_one_that_fits(fake_spec, tmp_path):
    spec = _at_batch_size(fake_spec, 4, tmp_path / "at-4")
    warnings = []
    out = _fake_sweep(spec, FakeEngine(max_batch=1), progress=Progress(warn=warnings.append))
    assert len(out.computed) == 5 and [w.split("; ")[0][-15:] for w in warnings] == ["at batch size 4",
                                                                                       "at batch size 2"]
    assert out.samples["batch_index"].max() == 3  # 4 samples, one a batch


def test_a_point_out_of_memory_at_batch_size_1_fails_or_is_recorded(fake_spec):
    failing = "img=0.5-txt=0.9-dec=0.3-split-copy-constant"
    with pytest.raises(MueBenchError, match=f"grid point {failing} failed: RuntimeError: CUDA out of memory"):
        _fake_sweep(fake_spec, FakeEngine(fail={failing}))
    out = _fake_sweep(fake_spec, FakeEngine(fail={failing}), SweepOptions(continue_on_error=True, meteor=False))
    assert out.failed == [failing] and len(out.computed) + len(out.reused) == 4  # the full model ran first


def test_out_of_memory_in_the_warm_up_or_while_scoring_is_one_line_exit_1(fake_spec, monkeypatch):
    warm = fake_spec.model_copy(update={"timing": fake_spec.timing.model_copy(update={"warmup": 1})})
    with pytest.raises(MueBenchError, match="out of memory in the warm-up at batch size 2 .*; lower run.batch_size"):
        _fake_sweep(warm, FakeEngine(max_batch=1))

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr("mue_bench.run.runner.score", no_memory)
    with pytest.raises(MueBenchError) as caught:
        _fake_sweep(fake_spec)
    assert str(caught.value) == ("out of memory while scoring (OutOfMemoryError: CUDA out of memory. Tried to "
                                 "allocate 2.00 GiB); every point is saved, so a rerun with more memory free only "
                                 "scores")
    monkeypatch.undo()
    assert len(_fake_sweep(fake_spec).reused) == 5

