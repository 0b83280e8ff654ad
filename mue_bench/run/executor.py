"""Who runs a sweep's grid points: this process (`local`, the default) or worker actors on a Ray cluster (`ray`,
run/ray_executor.py), behind one interface, so the spec, the store, resume and the results files are the same.

The runner hands an executor its points in units and writes what comes back. A unit is the points that share an
encoder setting (mode, τ_img, τ_txt, or a fixed exit's encoder layers), in grid order: one worker runs them back
to back, so grid reuse keeps that setting's encoder outputs, as the local loop always did. A `PointWorker` is one
engine with its inputs: it warms up before its first timed point, pairs every timed run with a full-model run
on its own device (its own `PairClock`), and reports a point that raises as failed instead of stopping, so the
runner decides, with `--continue-on-error`, whether the sweep goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pandas as pd
import torch

from mue_bench.data.loaders import Sample
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.registry import resolve_device
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import Engine
from mue_bench.mue.grid_reuse import encoder_setting
from mue_bench.mue.search import DecodingConfig
from mue_bench.run.prepare import Loader, prepare_inputs
from mue_bench.run.timing import DeviceTimer, Origin, Timer
from mue_bench.spec import SweepSpec

if TYPE_CHECKING:
    from mue_bench.run.runner import Progress


@dataclass
class PointDone:
    """One point's outcome from whichever worker ran it: its raw rows, or the error it raised."""

    point_id: str
    rows: pd.DataFrame | None
    error: BaseException | None = None
    executions: int = 0  # layer executions, warm-up included
    reference_s: float = 0.0  # seconds timing the full model inside this point's pairs


@dataclass(frozen=True)
class Model:
    """What the runner needs to know of the model the workers loaded, before it runs a point."""

    samples: list[Sample]
    native_encoder_mode: str | None
    depth: tuple[int, int]
    decoding: DecodingConfig  # what the engine searches with (a checkpoint's generation config may add to the spec)


class Executor(Protocol):
    device: torch.device  # recorded as the points' `device`
    workers: int

    def start(self) -> Model: ...

    def run(self, units: list[list[ExitConfig]], progress: Progress) -> Iterator[PointDone]: ...

    def close(self) -> None: ...


def units_of(configs: list[ExitConfig]) -> list[list[ExitConfig]]:
    """The points grouped by encoder setting, groups in the order of their first point, points in grid order."""
    units: dict = {}
    for cfg in configs:
        units.setdefault(encoder_setting(cfg), []).append(cfg)
    return list(units.values())


class PointWorker:
    """Runs grid points on one engine: the local executor's one, or a Ray actor's."""

    def __init__(self, spec: SweepSpec, engine: Engine, batches: list, timer: Timer, origin: Origin):
        from mue_bench.run.runner import PairClock

        self.spec, self.engine, self.batches, self.timer, self.origin = spec, engine, batches, timer, origin
        self.reuse = engine.grid_reuse() if spec.timing.batches else None
        self.clock = PairClock()
        self.warmed = not spec.timing.warmup
        self._executions = 0

    def warm_up(self, encoder_mode: str) -> None:
        """Once, before this worker's first timed point (runner.warm_up says why)."""
        from mue_bench.run.runner import warm_up

        if not self.warmed:
            self._executions += warm_up(self.engine, self.batches, encoder_mode, self.spec)
            self.warmed = True

    def run_point(self, cfg: ExitConfig, on_batch=lambda: None) -> PointDone:
        from mue_bench.run.runner import evaluate_point

        self.warm_up(cfg.encoder_mode)
        before = self.clock.reference_s
        rows, error, executions = None, None, 0
        try:
            rows, executions = evaluate_point(self.engine, self.batches, cfg, self.spec, self.timer, on_batch,
                                              self.reuse, self.clock, self.origin)
        except (KeyboardInterrupt, MueBenchError):
            raise
        except Exception as e:  # the runner records it or stops the sweep
            error = e
        executions, self._executions = executions + self._executions, 0
        return PointDone(cfg.point_id, rows, error, executions, self.clock.reference_s - before)


class LocalExecutor:
    """Today's loop: every point in this process, in unit order, on the spec's device."""

    workers = 1

    def __init__(self, spec: SweepSpec, load: Loader | None = None, timer: Timer | None = None):
        self.spec, self.load = spec, load or prepare_inputs
        self.device = resolve_device(spec.run.device)
        self.timer = timer or DeviceTimer(self.device)
        self.worker: PointWorker | None = None

    def start(self) -> Model:
        torch.manual_seed(self.spec.run.seed)
        engine, samples, batches = self.load(self.spec, self.device)
        self.worker = PointWorker(self.spec, engine, batches, self.timer, Origin.of(self.device))
        return Model(samples, engine.native_encoder_mode, engine.depth, engine.decoding)

    def run(self, units: list[list[ExitConfig]], progress: Progress) -> Iterator[PointDone]:
        assert self.worker is not None, "start() first"
        todo = [cfg for unit in units for cfg in unit]
        if todo and not self.worker.warmed:
            progress.warming_up()
            self.worker.warm_up(todo[0].encoder_mode)
        for cfg in todo:
            progress.start_point(cfg.point_id, len(self.worker.batches))
            yield self.worker.run_point(cfg, progress.batch_done)

    def close(self) -> None:
        self.worker = None


def executor_for(spec: SweepSpec, load: Loader | None = None, timer: Timer | None = None) -> Executor:
    """The spec's executor, its settings checked (bad input before any work)."""
    if spec.run.executor == "local":
        return LocalExecutor(spec, load, timer)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SpecError("run.executor = 'ray' needs Ray, which is not installed: pip install 'mue-bench[ray]'"
                        ) from None
    if timer is not None:
        raise TypeError("a Ray sweep times on each worker's own device; pass no timer")
    from mue_bench.run.ray_executor import RayExecutor

    return RayExecutor(spec, load)
