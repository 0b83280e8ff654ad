"""Running a sweep: load once, evaluate every grid point, score the whole grid at once, write records.

Shape: the model and the data are loaded once and every input is pre-processed before any timing.
Each point is warmed up, then timed over `repeats` passes of model work only, every timed run paired with
a full-model run of the same batch, back to back and in alternating order (scoring/paired.py turns the
pairs into time savings with intervals); the full model's own row is timed `reference_repeats` times. A
point's per-sample rows are written as soon as it finishes, so an interrupted sweep loses at most the point
in flight. Scoring happens once at the end for all points (one Java process for tokenizing, one for METEOR).
The runner drives an `Engine` and a `Timer` it is given, so tests run it on a fake model and a scripted
clock. Who runs the points is its executor's business (run/executor.py: this process, or Ray workers, each
point on one device); the store, resume and scoring are the runner's alike for both. A point that runs out of
memory is retried at half the batch size (down to 1) by the worker that ran it, which keeps the smaller size;
batch invariance makes its results those of a sweep run at that size.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median

import pandas as pd

from mue_bench.errors import MueBenchError, SpecError
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import Engine
from mue_bench.mue.grid_reuse import GridReuse
from mue_bench.results import (
    POINTS_SCHEMA,
    SAMPLES_SCHEMA,
    SampleRow,
    SweepStore,
    check_free_space,
    conform,
    results_bytes,
    sample_frame,
)
from mue_bench.run.executor import Executor, Model, executor_for, first_line, is_out_of_memory, units_of
from mue_bench.run.prepare import Loader
from mue_bench.run.provenance import provenance
from mue_bench.run.timing import Origin, Timer
from mue_bench.scoring.score import score
from mue_bench.scoring.summarise import failed_rows, summarise, with_origins
from mue_bench.spec import SweepSpec


@dataclass
class SweepOptions:
    fresh: bool = False
    continue_on_error: bool = False
    meteor: bool = True


@dataclass(frozen=True)
class PointBrief:
    """What is known of a point the moment it finishes (quality needs the scoring at the end)."""

    n: int
    layer_savings: float | None  # against its full model's rows, once those exist
    flop_savings: float | None


def brief(rows: pd.DataFrame, reference: pd.DataFrame | None) -> PointBrief:
    def saving(col: str) -> float | None:
        if reference is None or not reference[col].sum():
            return None
        return 1.0 - float(rows[col].sum()) / float(reference[col].sum())

    return PointBrief(len(rows), saving("layers_used"), saving("flops"))


@dataclass
class Progress:
    """Callbacks the CLI uses to draw progress; the library itself prints nothing."""

    start_points: Callable[[int, int], None] = lambda total, done: None
    start_point: Callable[[str, int], None] = lambda pid, n_batches: None
    batch_done: Callable[[], None] = lambda: None
    # (point id, ok, its PointBrief when ok)
    point_done: Callable[..., None] = lambda pid, ok, summary=None: None
    warming_up: Callable[[], None] = lambda: None
    scoring: Callable[[], None] = lambda: None
    warn: Callable[[str], None] = lambda message: None


@dataclass
class SweepOutcome:
    points: pd.DataFrame
    samples: pd.DataFrame
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    layer_executions: int = 0  # of the points computed in this run (warm-up and repeats included)
    wall_s: float = 0.0  # this run of the sweep, start to end
    reference_s: float = 0.0  # of which timing the full model inside pairs (summed over workers)
    workers: int = 1
    done: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # raw rows of every finished point


@dataclass
class PairClock:
    """Which of a pair runs first, alternating over the whole sweep, and the seconds spent timing the full
    model inside pairs (the price of paired timing, reported with the sweep)."""

    reference_first: bool = True
    reference_s: float = 0.0

    def next_order(self) -> bool:
        first, self.reference_first = self.reference_first, not self.reference_first
        return first


def _timed_pair(engine: Engine, batch, cfg: ExitConfig, timer: Timer, clock: PairClock) -> tuple[object, dict]:
    """The point and its full model on one batch, back to back, in the clock's order."""
    ref_cfg, ref_first, at = cfg.reference(), clock.next_order(), time.time()
    if ref_first:
        _, ref_s = timer.time(lambda: engine.run(batch, ref_cfg))
        raw, point_s = timer.time(lambda: engine.run(batch, cfg))
    else:
        raw, point_s = timer.time(lambda: engine.run(batch, cfg))
        _, ref_s = timer.time(lambda: engine.run(batch, ref_cfg))
    clock.reference_s += ref_s
    return raw, {"point_s": point_s, "ref_s": ref_s, "ref_first": ref_first, "at": at}


def evaluate_point(engine: Engine, batches: list, cfg: ExitConfig, spec: SweepSpec, timer: Timer,
                   on_batch: Callable[[], None] = lambda: None, reuse: GridReuse | None = None,
                   clock: PairClock | None = None, origin: Origin | None = None) -> tuple[pd.DataFrame, int]:
    """Per-sample raw rows of one grid point and the layer executions it took. The timed batches (all, or
    the first `timing.batches` when `reuse` is given) run in full: outputs of the first pass, median batch
    times, and for every point but the full model, each timed run paired with a full-model run of the same
    batch (scoring/paired.py). The rest come from `reuse`, with no latency."""
    clock = clock or PairClock()
    n_timed = len(batches) if reuse is None else _n_timed(spec, batches)
    executions = 0
    for _ in range(spec.timing.warmup):
        for batch in batches[:1]:
            executions += _executions(engine.run_batch(batch, cfg))
    timer.reset_peak_memory()
    times: list[list[float]] = [[] for _ in batches[:n_timed]]
    pairs: list[list[dict]] = [[] for _ in batches[:n_timed]]
    results = []
    for rep in range(_repeats(spec, cfg)):
        for i, batch in enumerate(batches[:n_timed]):
            if cfg.is_full:
                raw, secs = timer.time(lambda b=batch: engine.run(b, cfg))
            else:
                raw, pair = _timed_pair(engine, batch, cfg, timer, clock)
                pairs[i].append(pair)
                secs = pair["point_s"]
            times[i].append(secs)
            if rep == 0:
                results.append(engine.collect(raw, cfg))
                on_batch()
            executions += _executions(results[i])
    mem = timer.peak_memory()
    first = n_timed * spec.run.batch_size
    for i, batch in enumerate(batches[n_timed:], start=n_timed):
        assert reuse is not None
        results.append(reuse.evaluate(i, i * spec.run.batch_size, batch, cfg))
        on_batch()
    if reuse is not None:
        executions += reuse.take_executions()
    pid = cfg.point_id
    rows: list[SampleRow] = []
    index = 0
    for b, res in enumerate(results):
        share = median(times[b]) / len(res.samples) if b < n_timed else float("nan")
        batch_pairs = pairs[b] if b < n_timed else []
        for s in res.samples:
            rows.append(SampleRow(
                point_id=pid, sample_index=index, sample_id=None, batch_index=b,
                prediction=engine.text(s.tokens), tokens=s.tokens,
                enc_img_layers=s.enc_img_layers, enc_txt_layers=s.enc_txt_layers,
                dec_layers=s.dec_layers, layers_used=s.layers_used, flops=s.flops,
                latency_s=share, peak_mem_bytes=mem if index < first else None,
                host=origin.host if origin else None, device_name=origin.device_name if origin else None,
                pair_s=[p["point_s"] for p in batch_pairs], pair_ref_s=[p["ref_s"] for p in batch_pairs],
                pair_ref_first=[p["ref_first"] for p in batch_pairs], pair_at=[p["at"] for p in batch_pairs],
                enc_img_sims=s.enc_img_sims, enc_txt_sims=s.enc_txt_sims, dec_sims=s.dec_sims,
            ))
            index += 1
    return sample_frame(rows), executions


def warm_up(engine: Engine, batches: list, encoder_mode: str, spec: SweepSpec) -> int:
    """One untimed full-model pass over every batch that will be timed, before the first timed point: the
    first run of each input shape is slow (allocator growth, kernel selection), and without this pass the
    point timed first, the full model, pays for it and every time saving is inflated. Returns the layer
    executions it took."""
    cfg = ExitConfig(encoder_mode=encoder_mode)
    return sum(_executions(engine.run_batch(b, cfg)) for b in batches[:_n_timed(spec, batches)])


def _n_timed(spec: SweepSpec, batches: list) -> int:
    """How many batches of every point are run in full and timed (the rest come from grid reuse)."""
    return min(spec.timing.batches or len(batches), len(batches))


def _repeats(spec: SweepSpec, cfg: ExitConfig) -> int:
    return max(spec.timing.repeats, spec.timing.reference_repeats) if cfg.is_full else spec.timing.repeats


def _executions(result) -> int:
    return sum(s.layers_used for s in result.samples)


def run_sweep(spec: SweepSpec, options: SweepOptions | None = None, progress: Progress | None = None, *,
              load: Loader | None = None, timer: Timer | None = None) -> SweepOutcome:
    """Every point of the spec's grid, resuming from what its results folder already holds, on the spec's
    executor (run/executor.py: this process, or Ray workers). `load` gives the engine, samples and batches
    (default: the spec's model and data; a test passes a fake); `timer` times the model work (default: the
    device's own clock; local executor only)."""
    options, progress = options or SweepOptions(), progress or Progress()
    started = time.perf_counter()
    executor = executor_for(spec, load, timer)
    configs = {c.point_id: c for c in spec.points()}
    with SweepStore(spec.results_path(), spec.samples_path(), spec.context_hash(), fresh=options.fresh) as store:
        try:
            model = executor.start()
            check_free_space(spec.results_path().parent,
                             results_bytes(len(configs), len(model.samples), model.decoding.max_len, model.depth),
                             f"{len(configs)} grid points x {len(model.samples)} samples")
            store.open()
            outcome = _run_points(spec, options, progress, executor, model, configs, store)
        finally:
            executor.close()
        samples = model.samples
        done = outcome.done
        progress.scoring()
        if done:
            raw = pd.concat([done[pid] for pid in configs if pid in done], ignore_index=True)
            raw["sample_id"] = raw["sample_index"].map(lambda i: samples[i].sample_id)
            try:
                scored, corpus = score(raw, samples, configs, spec.data.task, meteor=options.meteor)
                points = with_origins(summarise(scored, configs, spec.data.task, corpus), scored)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                raise MueBenchError(f"out of memory while scoring ({first_line(e)}); every point is saved, so "
                                    "a rerun with more memory free only scores") from None
        else:  # every point failed: the results hold their failure records only
            scored, points = pd.DataFrame(columns=SAMPLES_SCHEMA.names), pd.DataFrame(columns=["point_id"])
        failures = store.failures()
        if failures:
            points = pd.concat([points, failed_rows(failures, configs)], ignore_index=True)
        for key, value in provenance(spec, executor.device, uuid.uuid4().hex[:12], model.decoding).items():
            points[key] = value
        points = conform(points, POINTS_SCHEMA)
        scored = conform(scored, SAMPLES_SCHEMA)
        store.finish(scored, points, keep_parts=bool(failures))
        outcome.points, outcome.samples = points, scored
        outcome.failed = sorted(set(outcome.failed) | set(failures))
        outcome.wall_s = time.perf_counter() - started
    return outcome


def _run_points(spec: SweepSpec, options: SweepOptions, progress: Progress, executor: Executor, model: Model,
                configs: dict[str, ExitConfig], store: SweepStore) -> SweepOutcome:
    """The points the store does not hold yet, written as each one finishes."""
    done = {pid: rows for pid, rows in store.finished().items() if pid in configs}
    native = model.native_encoder_mode
    if native and any(c.encoder_mode != native for c in configs.values()):
        progress.warn(f"this model's encoder is {'joint' if native == 'freeze' else 'split into streams'}; "
                      f"encoder_mode {'split' if native == 'freeze' else 'freeze'} computes a different "
                      f"function than the model was trained for (use {native!r} unless you mean it)")
    enc, dec = model.depth
    deep = next((c.fixed_exit for c in configs.values()
                 if c.fixed_exit and (max(c.fixed_exit[:2]) > enc or c.fixed_exit[2] > dec)), None)
    if deep is not None:
        raise SpecError(f"grid.fixed_exit {list(deep)}: this model has {enc} encoder and {dec} decoder layers")
    if any(len(rows) != len(model.samples) for rows in done.values()):
        raise MueBenchError("stored points cover a different number of samples; rerun with --fresh")

    outcome = SweepOutcome(pd.DataFrame(), pd.DataFrame(), reused=list(done), done=done, workers=executor.workers)
    progress.start_points(len(configs), len(done))
    units = units_of([c for pid, c in configs.items() if pid not in done])
    for result in executor.run(units, progress):
        pid = result.point_id
        for warning in result.warnings:
            progress.warn(warning)
        outcome.layer_executions += result.executions
        outcome.reference_s += result.reference_s
        if result.error is not None:  # one failing point does not lose the grid, if asked
            e = result.error
            if not options.continue_on_error:
                raise MueBenchError(f"grid point {pid} failed: {first_line(e)} (finished points are "
                                    "saved; --continue-on-error records failures and goes on)") from e
            store.save_failure(pid, e)
            outcome.failed.append(pid)
            progress.point_done(pid, False)
            continue
        store.save_point(pid, result.rows)
        done[pid] = result.rows
        outcome.computed.append(pid)
        progress.point_done(pid, True, brief(result.rows, done.get(configs[pid].reference_id)))
    return outcome
