"""Who runs a sweep's grid points: this process (`local`, the default) or worker actors on a Ray cluster (`ray`,
run/ray_executor.py), behind one interface, so the spec, the store, resume and the results files are the same.

The runner hands an executor its points in units and writes what comes back. A unit is the points that share an
encoder setting (mode, τ_img, τ_txt, or a fixed exit's encoder layers), in grid order: one worker runs them back
to back, so grid reuse keeps that setting's encoder outputs, as the local loop always did. A `PointWorker` is one
engine with its inputs: it warms up before its first timed point, pairs every timed run with a full-model run
on its own device (its own `PairClock`), and reports a point that raises as failed instead of stopping, so the
runner decides, with `--continue-on-error`, whether the sweep goes on. A point that runs out of memory is retried
at half the batch size, down to 1, and the worker keeps the smaller size for the points after it: every point's
timing pairs include a full-model run at the same size, so if one point does not fit the others would not
either; batch invariance makes the results those of a sweep at that size.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from mue_bench.run.prepare import Loader, prepare_batches, prepare_inputs
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
    warnings: list[str] = field(default_factory=list)  # for the user, e.g. a retry at a smaller batch size


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


def is_out_of_memory(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, a RuntimeError that says so (older torch, other backends), or MemoryError."""
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


class PointWorker:
    """Runs grid points on one engine: the local executor's one, or a Ray actor's. `spec` is the sweep's spec
    with the batch size the worker runs at now (what the timing reads); `samples` and `device` rebuild the
    batches after an out-of-memory point."""

    def __init__(self, spec: SweepSpec, engine: Engine, batches: list, timer: Timer, origin: Origin,
                 samples: list[Sample], device: torch.device):
        from mue_bench.run.runner import PairClock

        self.spec, self.engine, self.batches, self.timer, self.origin = spec, engine, batches, timer, origin
        self.samples, self.device = samples, device
        self.reuse = engine.grid_reuse() if spec.timing.batches else None
        self.clock = PairClock()
        self.warmed = not spec.timing.warmup
        self._executions = 0

    @property
    def batch_size(self) -> int:
        return self.spec.run.batch_size

    def warm_up(self, encoder_mode: str) -> None:
        """Once, before this worker's first timed point (runner.warm_up says why)."""
        from mue_bench.run.runner import warm_up

        if self.warmed:
            return
        try:
            self._executions += warm_up(self.engine, self.batches, encoder_mode, self.spec)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise MueBenchError(f"out of memory in the warm-up at batch size {self.batch_size} ({first_line(e)}); "
                                "lower run.batch_size") from None
        self.warmed = True

    def halve(self) -> None:
        """Run at half the batch size from now on: the old batches' memory goes before the new ones take theirs,
        and grid reuse, which keeps encoder outputs by batch index, starts afresh."""
        size = max(1, self.batch_size // 2)
        self.spec = self.spec.model_copy(update={"run": self.spec.run.model_copy(update={"batch_size": size})})
        self.batches = []
        free_memory()
        self.batches = prepare_batches(self.engine, self.samples, size, self.device)
        self.reuse = self.engine.grid_reuse() if self.reuse is not None else None

    def run_point(self, cfg: ExitConfig, on_batch=lambda: None) -> PointDone:
        from mue_bench.run.runner import evaluate_point

        self.warm_up(cfg.encoder_mode)
        before = self.clock.reference_s
        rows, error, executions, warnings = None, None, 0, []
        while True:
            try:
                rows, executions = evaluate_point(self.engine, self.batches, cfg, self.spec, self.timer, on_batch,
                                                  self.reuse, self.clock, self.origin)
                break
            except (KeyboardInterrupt, MueBenchError):
                raise
            except Exception as e:  # the runner records it or stops the sweep
                if not is_out_of_memory(e) or self.batch_size == 1:
                    error = e
                    break
            old = self.batch_size  # out of the except block: the error's frames, and the tensors they hold, are gone
            self.halve()
            warnings.append(f"grid point {cfg.point_id}: out of memory at batch size {old}; retrying at "
                            f"{self.batch_size} (and keeping it for the rest of the sweep)")
        executions, self._executions = executions + self._executions, 0
        return PointDone(cfg.point_id, rows, error, executions, self.clock.reference_s - before, warnings)


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
        self.worker = PointWorker(self.spec, engine, batches, self.timer, Origin.of(self.device), samples, self.device)
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
