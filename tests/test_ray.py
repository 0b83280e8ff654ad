"""The Ray executor: the same points and metrics as the local one, resume, a worker killed mid-sweep, failures, and
bad input refused before any work. One small Ray session (2 CPUs) serves every test."""

from __future__ import annotations

import os
import signal
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.run.runner import Progress, SweepOptions, run_sweep
from mue_bench.spec import load_spec
from tests.fakes import FakeEngine, fake_loader

ray = pytest.importorskip("ray")

TIMING = ["latency_s", "wall_s", "wall_full_s", "time_savings", "time_savings_lo", "time_savings_hi", "n_pairs",
          "realization", "realization_lo", "realization_hi", "latency_p50_s", "latency_p90_s", "timing_warning",
          "pair_s", "pair_ref_s", "pair_ref_first", "pair_at", "run_id", "created_at", "git_rev",
          "device_name", "host"]  # where it ran: a Ray worker has its own thread count, so its own device name


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    with warnings.catch_warnings():  # some Ray versions warn of a later release's accelerator variables
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def write_spec(folder: Path, shapes_root: Path, checkpoint: Path, task: str = "entailment", executor: str = "ray",
               tau_dec: str = "[0.3, 0.9]", timing: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.toml"
    path.write_text(textwrap.dedent(f"""
        [model]
        checkpoint = "{checkpoint}"
        [data]
        root = "{shapes_root}"
        task = "{task}"
        limit = 4
        [decoding]
        max_len = 6
        [grid]
        tau_img = [0.5, 0.9]
        tau_txt = [0.9]
        tau_dec = {tau_dec}
        encoder_mode = ["split"]
        [run]
        batch_size = 2
        executor = "{executor}"
        workers = 2
        [timing]
        warmup = 0
        {timing}
        [output]
        dir = "{folder / 'results'}"
    """))
    return path


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["point_id", "sample_index"] if "sample_index" in df else ["point_id"]
    return df.drop(columns=[c for c in TIMING if c in df]).sort_values(keys).reset_index(drop=True)


def assert_same_results(a, b) -> None:
    pd.testing.assert_frame_equal(comparable(a.points), comparable(b.points), check_dtype=False)
    pd.testing.assert_frame_equal(comparable(a.samples), comparable(b.samples), check_dtype=False)


def our_workers() -> list:
    return [ray.get_actor(name) for name in ray.util.list_named_actors() if name.startswith("mue-bench-")]


def test_two_workers_give_the_local_executors_points_and_metrics(tmp_path, shapes_root, random_checkpoint):
    # captions, and timing only the first batch so that grid reuse evaluates the rest on each worker
    timing = "batches = 1"
    spread = load_spec(write_spec(tmp_path / "ray", shapes_root, random_checkpoint, "caption", timing=timing))
    local = load_spec(write_spec(tmp_path / "local", shapes_root, random_checkpoint, "caption", "local",
                                 timing=timing))
    done = []
    on_ray = run_sweep(spread, SweepOptions(meteor=False), Progress(point_done=lambda pid, ok, *_: done.append(pid)))
    here = run_sweep(local, SweepOptions(meteor=False))
    assert sorted(done) == sorted(on_ray.computed) == sorted(here.computed) and len(done) == 5
    assert_same_results(on_ray, here)
    assert on_ray.points["host"].notna().all() and on_ray.points["device_name"].notna().all()
    assert not our_workers()  # stopped at the end


def test_an_interrupted_ray_sweep_resumes_computing_only_the_missing_points_and_records_a_raising_one(
        tmp_path, shapes_root, random_checkpoint):
    spec = load_spec(write_spec(tmp_path, shapes_root, random_checkpoint))
    done = []

    def interrupt_after_two(pid, ok, *_):
        done.append(pid)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, SweepOptions(meteor=False), Progress(point_done=interrupt_after_two),
                  load=fake_loader(FakeEngine()))
    assert not our_workers()
    parts = spec.results_path().with_suffix(".parts")
    assert sorted(p.stem for p in parts.glob("*.parquet")) == sorted(done)
    missing = {c.point_id for c in spec.points()} - set(done)
    # a point that raises is a failed point, not a dead worker: recorded once, not retried (not the full model,
    # which every point's pairs run)
    failing = min(p for p in missing if not p.startswith("full"))
    warnings = []
    resumed = run_sweep(spec, SweepOptions(continue_on_error=True, meteor=False), Progress(warn=warnings.append),
                        load=fake_loader(FakeEngine(fail={failing}, fail_message="deterministic failure (fake)")))
    assert sorted(resumed.reused) == sorted(done) and not warnings
    assert sorted(resumed.computed) == sorted(missing - {failing}) and resumed.failed == [failing]
    points = pd.read_parquet(spec.results_path()).set_index("point_id")
    assert len(points) == 5 and "deterministic failure" in points.loc[failing, "error"]


def test_a_worker_killed_mid_sweep_loses_no_point_and_duplicates_none(tmp_path, shapes_root, random_checkpoint):
    three = "[0.3, 0.6, 0.9]"  # units of three points, so a kill after a unit's first lands inside it
    spec = load_spec(write_spec(tmp_path / "ray", shapes_root, random_checkpoint, tau_dec=three))
    local = load_spec(write_spec(tmp_path / "local", shapes_root, random_checkpoint, executor="local", tau_dec=three))
    load = fake_loader(FakeEngine(delay_s=0.05))
    killed, warnings, done = [], [], []

    def kill_a_busy_worker(pid, ok, *_):
        done.append(pid)
        if killed or pid.startswith("full"):
            return
        states = [ray.get(w.describe.remote(), timeout=30) for w in our_workers()]
        busy = [s for s in states if s["point"]] or states
        os.kill(busy[0]["pid"], signal.SIGKILL)
        killed.append(busy[0])

    out = run_sweep(spec, SweepOptions(meteor=False), Progress(point_done=kill_a_busy_worker, warn=warnings.append),
                    load=load)
    assert killed and len(done) == len(set(done)) == len(spec.points()) == 7
    if killed[0]["point"]:
        assert any(f"pid {killed[0]['pid']}" in w and "died" in w for w in warnings)
    assert out.points["point_id"].is_unique and len(out.points) == 7
    assert not out.samples.duplicated(["point_id", "sample_index"]).any()
    assert_same_results(out, run_sweep(local, SweepOptions(meteor=False), load=load))


def test_a_unit_whose_worker_dies_each_time_fails_after_three_tries_instead_of_forever(fake_spec_configs):
    from collections import deque

    from mue_bench.run.ray_executor import TRIES, RayExecutor, WorkerLost

    executor, queue, tries, warnings = RayExecutor.__new__(RayExecutor), deque(), {}, []
    executor.info = [{"pid": 1, "host": "h"}]
    unit = fake_spec_configs[1:3]
    for attempt in range(TRIES):
        lost = list(executor._lost(0, list(unit), queue, tries, Progress(warn=warnings.append), RuntimeError()))
        if attempt < TRIES - 1:
            assert not lost and queue.popleft() == unit  # back to the front of the queue
    assert len(warnings) == TRIES - 1 and not queue
    assert [d.point_id for d in lost] == [c.point_id for c in unit]
    assert all(isinstance(d.error, WorkerLost) and d.rows is None for d in lost)


@pytest.fixture
def fake_spec_configs(tmp_path, shapes_root, random_checkpoint):
    return load_spec(write_spec(tmp_path, shapes_root, random_checkpoint)).points()


runner = CliRunner()


@pytest.mark.parametrize("args, expected", [
    (["--address", "127.0.0.1:1"], "no Ray head answers there"),
    (["--address", "not-an-address"], "give host:port"),
    (["--workers", "5"], "can place 2 worker(s)"),
], ids=["unreachable", "malformed", "too-many-workers"])
def test_bad_ray_input_is_one_line_exit_2_and_writes_nothing(args, expected, tmp_path, shapes_root,
                                                              random_checkpoint):
    path = write_spec(tmp_path, shapes_root, random_checkpoint)
    result = runner.invoke(app, ["sweep", str(path), "--no-meteor", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() and not our_workers()


def test_executor_ray_without_ray_installed_is_bad_input(tmp_path, shapes_root, random_checkpoint, monkeypatch):
    path = write_spec(tmp_path, shapes_root, random_checkpoint, executor="local")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` now fails
    result = runner.invoke(app, ["sweep", str(path), "--executor", "ray"])
    assert result.exit_code == 2 and "pip install 'mue-bench[ray]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "results").exists()
