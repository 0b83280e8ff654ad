"""Sweeps: the files, their schemas, resume after interruption, and metrics recomputed from samples."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mue_bench.results import POINTS_SCHEMA, SAMPLES_SCHEMA
from mue_bench.run.runner import Progress, SweepOptions, run_sweep
from mue_bench.scoring.paired import paired_saving, pairs_of
from mue_bench.spec import load_spec
from tests.fakes import FakeEngine, FakeTimer, fake_loader

TIMING_COLUMNS = ["latency_s", "wall_s", "wall_full_s", "time_savings", "realization", "latency_p50_s",
                  "latency_p90_s", "run_id", "created_at", "pair_s", "pair_ref_s", "pair_ref_first", "pair_at",
                  "time_savings_lo", "time_savings_hi", "n_pairs", "realization_lo", "realization_hi", "timing_warning"]


def write_spec(tmp_path: Path, shapes_root: Path, checkpoint: Path, name: str = "t", task: str = "caption") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        [model]
        checkpoint = "{checkpoint}"
        [data]
        root = "{shapes_root}"
        task = "{task}"
        split = "test"
        limit = 4
        [decoding]
        max_len = 6
        [grid]
        tau_img = [0.5, 0.9]
        tau_txt = [0.9]
        tau_dec = [0.3, 0.9]
        encoder_mode = ["split"]  # the random checkpoint's native mode
        [run]
        batch_size = 2
        [timing]
        warmup = 0
        [output]
        dir = "{tmp_path / 'results'}"
    """))
    return path


@pytest.fixture
def spec_path(tmp_path, shapes_root, random_checkpoint):
    return write_spec(tmp_path, shapes_root, random_checkpoint)


def test_sweep_writes_typed_parquet_with_one_row_per_point(spec_path):
    spec = load_spec(spec_path)
    out = run_sweep(spec, SweepOptions(meteor=False))
    assert pq.read_schema(spec.results_path()).remove_metadata() == POINTS_SCHEMA
    assert pq.read_schema(spec.samples_path()).remove_metadata() == SAMPLES_SCHEMA
    points = pd.read_parquet(spec.results_path())
    assert len(points) == len(spec.points()) == 5
    assert points["point_id"].is_unique and points["is_full"].sum() == 1
    full = points[points["is_full"]].iloc[0]
    assert full.layer_savings == 0 and full.quality_rel == 1 and full.consistency == 1
    assert (points["layer_savings"] >= 0).all()
    assert len(pd.read_parquet(spec.samples_path())) == 5 * 4
    assert not spec.results_path().with_suffix(".parts").exists()
    assert set(out.computed) == set(points["point_id"])


def test_every_metric_can_be_recomputed_from_the_samples_file(spec_path):
    spec = load_spec(spec_path)
    run_sweep(spec, SweepOptions(meteor=False))
    points = pd.read_parquet(spec.results_path()).set_index("point_id")
    samples = pd.read_parquet(spec.samples_path())
    full = samples[samples["point_id"] == "full-split"]
    for pid, rows in samples.groupby("point_id"):
        p = points.loc[pid]
        assert p.n == len(rows)
        assert p.enc_img_layers == pytest.approx(rows["enc_img_layers"].mean())
        tokens = [u for d in rows["dec_layers"] for u in d]
        assert p.dec_layers == pytest.approx(np.mean(tokens))
        used = rows["enc_img_layers"].sum() + rows["enc_txt_layers"].sum() + len(tokens) * 0 + sum(tokens)
        full_used = full["enc_img_layers"].sum() + full["enc_txt_layers"].sum() + sum(
            u for d in full["dec_layers"] for u in d)
        assert p.layer_savings == pytest.approx(1 - used / full_used)
        assert p.flop_savings == pytest.approx(1 - rows["flops"].sum() / full["flops"].sum())
        batches = rows.drop_duplicates("batch_index")  # each row of a batch carries its batch's pairs
        point_s = np.concatenate(batches["pair_s"].tolist())
        ref_s = np.concatenate(batches["pair_ref_s"].tolist())
        if p.is_full:
            assert len(point_s) == 0 and p.time_savings == 0
        else:
            assert p.n_pairs == len(point_s) == len(batches)
            assert p.time_savings == pytest.approx(1 - np.median(point_s / ref_s))
            assert p.time_savings_lo <= p.time_savings <= p.time_savings_hi
            again = paired_saving(pairs_of(rows))  # the interval too, from the file's pair times alone
            assert (p.time_savings_lo, p.time_savings_hi) == pytest.approx((again.lo, again.hi))
            assert p.realization_lo == pytest.approx(again.lo / p.flop_savings)
            assert p.realization == pytest.approx(p.time_savings / p.flop_savings)
            assert p.wall_full_s == pytest.approx(np.mean([np.median(r) for r in rows["pair_ref_s"]]) * len(rows)
                                                  / 2)  # batches of 2: each sample's share is half its batch's
        assert p.quality == pytest.approx(rows["cider"].mean())
        assert p.quality_rel == pytest.approx(rows["cider"].mean() / full["cider"].mean())
        assert p.consistency == pytest.approx(rows["consistency"].mean())
        assert p.latency_p90_s == pytest.approx(np.percentile(rows["latency_s"], 90))


def test_entailment_sweep_scores_accuracy(tmp_path, shapes_root, random_checkpoint):
    spec = load_spec(write_spec(tmp_path, shapes_root, random_checkpoint, "e", "entailment"))
    points = run_sweep(spec).points
    assert (points["quality_metric"] == "accuracy").all()
    assert points["accuracy"].between(0, 1).all() and points["cider"].isna().all()


@pytest.fixture
def fake_spec(tmp_path, shapes_root, random_checkpoint):
    """An entailment spec (scored without Java) for the fake engine: 4 samples, batch size 2, 5 points."""
    return load_spec(write_spec(tmp_path, shapes_root, random_checkpoint, "f", "entailment"))


def _fake_sweep(spec, engine=None, options=None, progress=None, seconds=lambda pid, n: 1.0):
    engine = engine or FakeEngine()
    timer = FakeTimer(engine, seconds)
    return run_sweep(spec, options or SweepOptions(meteor=False), progress, load=fake_loader(engine), timer=timer)


def test_rerun_reuses_every_finished_point(fake_spec):
    first = _fake_sweep(fake_spec)
    engine = FakeEngine()
    second = _fake_sweep(fake_spec, engine)
    assert second.computed == [] and sorted(second.reused) == sorted(first.computed) and engine.runs == []
    assert len(pd.read_parquet(fake_spec.results_path())) == 5
    fresh = _fake_sweep(fake_spec, options=SweepOptions(fresh=True, meteor=False))
    assert sorted(fresh.computed) == sorted(first.computed)


def _with_timing(spec, **timing):
    return spec.model_copy(update={"timing": spec.timing.model_copy(update=timing)})


def test_every_timed_batch_runs_once_untimed_through_the_full_model_before_the_first_timed_point(fake_spec):
    engine = FakeEngine()
    spec = _with_timing(fake_spec, warmup=1)
    out = _fake_sweep(spec, engine)
    calls = engine.runs
    first_timed = next(i for i, (_, on) in enumerate(calls) if on)
    full = out.points.loc[out.points["is_full"], "point_id"].item()
    assert calls[:2] == [(full, False), (full, False)]  # 4 samples at batch size 2: both batches, untimed
    assert first_timed == 3  # then the first point's own warm-up batch, then its timed batches
    # a rerun with nothing left to compute does no warm-up
    calls.clear()
    _fake_sweep(spec, engine)
    assert calls == []


def test_the_full_model_is_timed_reference_repeats_times_and_once_beside_every_timed_point_run(fake_spec):
    engine = FakeEngine()
    out = _fake_sweep(_with_timing(fake_spec, repeats=2, reference_repeats=5), engine)
    timed_points = [pid for pid, on in engine.runs if on]
    batches = 2  # 4 samples at batch size 2
    counts = {pid: timed_points.count(pid) for pid in out.points["point_id"]}
    full = out.points.loc[out.points["is_full"], "point_id"].item()
    assert set(counts.values()) - {counts[full]} == {2 * batches}
    assert counts.pop(full) == 5 * batches + sum(counts.values())  # its own row, then one run per pair


def test_each_pair_runs_the_point_and_its_full_model_back_to_back_in_alternating_order(fake_spec):
    engine = FakeEngine()
    out = _fake_sweep(_with_timing(fake_spec, repeats=3), engine)
    full = "full-split"
    timed = [pid for pid, on in engine.runs if on]
    own = 3 * 2  # the full model's own row first: reference_repeats x 2 batches
    assert timed[:own] == [full] * own
    pairs = [timed[i:i + 2] for i in range(own, len(timed), 2)]
    assert all(full in p and len(set(p)) == 2 for p in pairs)
    assert [p[0] == full for p in pairs] == [i % 2 == 0 for i in range(len(pairs))]
    samples = out.samples.drop_duplicates(["point_id", "batch_index"])
    orders = [o for v in samples[samples["point_id"] != full]["pair_ref_first"] for o in v]
    assert orders.count(True) == orders.count(False)


def test_time_savings_are_one_minus_the_median_ratio_of_the_pairs_the_timer_reads(fake_spec):
    out = _fake_sweep(fake_spec, seconds=lambda pid, n: 4.0 if pid == "full-split" else 1.0)
    savings = out.points.set_index("point_id")["time_savings"]
    assert savings["full-split"] == 0 and savings.drop("full-split").tolist() == pytest.approx([0.75] * 4)
    assert out.points["timing_warning"].isna().all()


def test_under_a_slowing_machine_paired_savings_hold_and_the_drift_alarm_says_so(fake_spec):
    # every run takes 10% longer than the one before: by the end the machine is several times slower
    out = _fake_sweep(_with_timing(fake_spec, repeats=3),
                      seconds=lambda pid, n: (4.0 if pid == "full-split" else 1.0) * 1.1 ** n)
    points = out.points.set_index("point_id").drop("full-split")
    assert points["time_savings_lo"].min() > 0.6 and points["time_savings_hi"].max() < 0.9
    unpaired = 1 - points["wall_s"] / out.points.set_index("point_id").loc["full-split", "wall_s"]
    assert (unpaired < 0.5).all() and (unpaired < 0).sum() >= 2  # against the full model timed at the start
    assert out.points["timing_warning"].str.contains("slower at the end of the sweep").all()


def test_a_failing_point_is_recorded_the_rest_go_on_and_a_rerun_retries_it(fake_spec):
    failing = "img=0.5-txt=0.9-dec=0.3-split-copy-constant"
    out = _fake_sweep(fake_spec, FakeEngine(fail={failing}), SweepOptions(continue_on_error=True, meteor=False))
    assert out.failed == [failing] and len(out.computed) == 4
    failed = out.points.set_index("point_id").loc[failing]
    assert failed.status == "failed" and "CUDA out of memory" in failed.error
    assert (fake_spec.results_path().with_suffix(".parts") / f"{failing}.failed.json").is_file()
    healed = _fake_sweep(fake_spec)
    assert healed.computed == [failing] and not healed.failed


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df]).sort_values("point_id").reset_index(drop=True)


def test_interrupted_sweep_resumes_to_the_same_result(tmp_path, shapes_root, random_checkpoint):
    spec = load_spec(write_spec(tmp_path, shapes_root, random_checkpoint, "i", "entailment"))
    done = []

    def interrupt_after_two(pid, ok, summary=None):
        done.append(pid)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fake_sweep(spec, progress=Progress(point_done=interrupt_after_two))
    parts = sorted(p.stem for p in spec.results_path().with_suffix(".parts").glob("*.parquet"))
    assert parts == sorted(done)
    for part in spec.results_path().with_suffix(".parts").glob("*.parquet"):
        pq.read_table(part)  # readable
    resumed = _fake_sweep(spec)
    assert sorted(resumed.reused) == sorted(done) and len(resumed.computed) == 3

    (tmp_path / "u").mkdir()
    other = load_spec(write_spec(tmp_path / "u", shapes_root, random_checkpoint, "i", "entailment"))
    uninterrupted = _fake_sweep(other)
    a = _comparable(pd.read_parquet(spec.results_path()))
    b = _comparable(pd.read_parquet(other.results_path()))
    assert len(uninterrupted.computed) == 5
    pd.testing.assert_frame_equal(a.drop(columns=["git_rev"]), b.drop(columns=["git_rev"]), check_dtype=False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_sweep_process_leaves_readable_files_and_resumes(sig, tmp_path, shapes_root, random_checkpoint):
    spec_file = write_spec(tmp_path, shapes_root, random_checkpoint, "k")
    spec = load_spec(spec_file)
    parts = spec.results_path().with_suffix(".parts")
    cmd = [sys.executable, "-m", "mue_bench", "sweep", str(spec_file), "--no-meteor"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    finished = {p.stem for p in parts.glob("*.parquet")}
    for p in parts.glob("*.parquet"):
        pq.read_table(p)
    if spec.results_path().exists():  # the sweep can end, parts merged, before the signal lands
        finished |= set(pd.read_parquet(spec.results_path())["point_id"])
    assert not list(parts.glob("*.tmp")) or sig == signal.SIGKILL
    resumed = run_sweep(spec, SweepOptions(meteor=False))
    assert set(resumed.reused) == finished
    assert len(resumed.computed) == 5 - len(finished)
    assert len(pd.read_parquet(spec.results_path())) == 5


def test_a_row_key_the_results_schema_lacks_is_refused_not_dropped():
    import pandas as pd
    import pytest

    from mue_bench.results import POINTS_SCHEMA, conform

    assert list(conform(pd.DataFrame({"quality": [1.0]}), POINTS_SCHEMA).columns) == POINTS_SCHEMA.names
    with pytest.raises(ValueError, match="quailty"):
        conform(pd.DataFrame({"quailty": [1.0]}), POINTS_SCHEMA)


def test_a_fixed_exit_deeper_than_the_model_is_refused_before_any_point_runs(fake_spec):
    from mue_bench.errors import SpecError

    deep = fake_spec.model_copy(update={"grid": fake_spec.grid.model_copy(update={"fixed_exit": [(7, 1, 1)]})})
    engine = FakeEngine()
    with pytest.raises(SpecError, match="6 encoder and 6 decoder layers"):
        _fake_sweep(deep, engine)
    assert engine.runs == [] and not deep.results_path().exists()


def test_a_second_sweep_of_the_same_spec_refuses_while_the_first_runs_and_the_results_equal_one_run(
        fake_spec, tmp_path, shapes_root, random_checkpoint):
    from mue_bench.errors import MueBenchError

    refusals = []

    def try_a_second_sweep(pid, ok, summary=None):
        if not refusals:
            with pytest.raises(MueBenchError, match="another sweep") as err:
                _fake_sweep(fake_spec)
            refusals.append(str(err.value))

    first = _fake_sweep(fake_spec, progress=Progress(point_done=try_a_second_sweep))
    assert refusals and f"pid {os.getpid()}" in refusals[0] and "\n" not in refusals[0]
    assert not fake_spec.results_path().with_suffix(".lock").exists()
    (tmp_path / "alone").mkdir()
    alone = _fake_sweep(load_spec(write_spec(tmp_path / "alone", shapes_root, random_checkpoint, "f", "entailment")))
    pd.testing.assert_frame_equal(_comparable(first.points).drop(columns=["git_rev"]),
                                  _comparable(alone.points).drop(columns=["git_rev"]), check_dtype=False)


def test_a_lock_left_by_a_dead_sweep_is_taken_over_and_temp_files_of_a_killed_write_removed(fake_spec):
    import json
    import socket

    results = fake_spec.results_path()
    results.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    results.with_suffix(".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    leftover = results.parent / f".{results.name}.abc123.tmp"
    leftover.write_bytes(b"torn")
    out = _fake_sweep(fake_spec)
    assert len(out.computed) == 5 and not leftover.exists()


def test_results_files_respect_the_umask(fake_spec):
    old = os.umask(0o022)
    try:
        _fake_sweep(fake_spec)
    finally:
        os.umask(old)
    assert fake_spec.results_path().stat().st_mode & 0o777 == 0o644


def test_an_output_dir_that_is_a_file_or_not_writable_is_refused_before_any_model_work(fake_spec, tmp_path):
    from mue_bench.errors import SpecError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for folder, expected in ((blocker, "is a file"), (blocker / "below", "cannot be created")):
        spec = fake_spec.model_copy(update={"output": fake_spec.output.model_copy(update={"dir": str(folder)})})
        engine = FakeEngine()
        with pytest.raises(SpecError, match=expected):
            _fake_sweep(spec, engine)
        assert engine.runs == []


def test_when_every_point_fails_the_failures_are_written_and_nothing_crashes(fake_spec):
    every = {p.point_id for p in fake_spec.points()}
    out = _fake_sweep(fake_spec, FakeEngine(fail=every), SweepOptions(continue_on_error=True, meteor=False))
    assert sorted(out.failed) == sorted(every)
    points = pd.read_parquet(fake_spec.results_path())
    assert (points["status"] == "failed").all() and len(points) == 5


def test_ctrl_c_while_scoring_exits_130_within_seconds_and_the_rerun_resumes(tmp_path, shapes_root, random_checkpoint):
    spec_file = write_spec(tmp_path, shapes_root, random_checkpoint, "s")
    proc = subprocess.Popen([sys.executable, "-m", "mue_bench", "sweep", str(spec_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    for line in proc.stderr:  # its own log line says when scoring starts
        if "scoring" in line or time.time() > deadline:
            break
    time.sleep(0.5)  # into the Java tokenizer or METEOR
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    assert proc.wait(timeout=30) == 130
    assert time.time() - sent < 10
    spec = load_spec(spec_file)
    resumed = run_sweep(spec, SweepOptions(meteor=False))
    assert resumed.computed == [] and len(resumed.reused) == 5
    assert len(pd.read_parquet(spec.results_path())) == 5
