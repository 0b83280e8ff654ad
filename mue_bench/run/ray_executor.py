"""The Ray executor: a sweep's units on worker actors spread over a Ray cluster, written by the driver.

Why it is shaped so:
- Each actor loads the model and pre-processes the data once (the same loader as the local runner), then runs
  whole units (run/executor.py): grid reuse, warm-up and paired timing stay on one device, so a point's time
  saving divides by full-model times taken beside it on the same worker.
- An actor streams its unit back a point at a time (a Ray generator): the driver writes each point through the
  store as it arrives, so a worker that dies loses only the point it was running; the rest of its unit goes to
  the next free worker (the dead one restarted, or another), at most TRIES times per unit.
- A point that raises is a result, not a death: the runner records it (--continue-on-error) or stops.
- Placement is checked before anything loads: too many workers, or an address nobody answers on, is bad input.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Iterator

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.registry import resolve_device
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.grid_reuse import encoder_setting
from mue_bench.run.executor import Model, PointDone, PointWorker
from mue_bench.run.prepare import Loader, prepare_inputs
from mue_bench.run.timing import DeviceTimer, Origin
from mue_bench.spec import SweepSpec

CONNECT_TIMEOUT_S = 5.0  # an address that does not answer this fast is a wrong address
PLACEMENT_TIMEOUT_S = 30.0  # workers that fit the cluster but cannot be placed by then: its resources are in use
TRIES = 3  # a unit whose worker dies this often is given up: its remaining points fail
RESTARTS = 3  # per actor; Ray restarts a dead one in its placement bundle


class WorkerLost(RuntimeError):
    """A point's worker died each time it ran the point's unit."""


@ray.remote(concurrency_groups={"info": 1}, max_restarts=RESTARTS, max_task_retries=0)
class SweepActor:
    """One worker: a PointWorker on the device Ray gave this process, loaded on first use (after a restart too)."""

    def __init__(self, spec: SweepSpec, load: Loader | None, cpus: float, gpu: bool):
        self.spec, self.load, self.cpus, self.gpu = spec, load, cpus, gpu
        self.worker: PointWorker | None = None
        self.model: Model | None = None
        self.origin: Origin | None = None
        self.current: str | None = None

    def setup(self) -> Model:
        if self.worker is None:
            torch.set_num_threads(max(1, int(self.cpus)))
            torch.manual_seed(self.spec.run.seed)
            device = resolve_device("cuda" if self.gpu else "cpu")
            engine, samples, batches = (self.load or prepare_inputs)(self.spec, device)
            self.origin = Origin.of(device)
            self.worker = PointWorker(self.spec, engine, batches, DeviceTimer(device), self.origin, samples, device)
            self.model = Model(samples, engine.native_encoder_mode, engine.depth, engine.decoding)
        assert self.model is not None
        return self.model

    @ray.method(concurrency_group="info")
    def describe(self) -> dict:
        """Answers while a unit runs: who this worker is and which point it is on."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "point": self.current,
                "device_name": self.origin.device_name if self.origin else None}

    def run_unit(self, configs: list[ExitConfig]) -> Iterator[PointDone]:
        self.setup()
        assert self.worker is not None
        for cfg in configs:
            self.current = cfg.point_id
            done = self.worker.run_point(cfg)
            self.current = None
            if done.error is not None and _device_lost(done.error):
                # the CUDA context is unusable: die, so Ray restarts this worker and the driver resubmits the unit
                print(f"{cfg.point_id}: {type(done.error).__name__}: {done.error}; exiting", file=sys.stderr)
                os._exit(1)
            if done.error is not None:
                done.error = _portable(done.error)
            yield done


def _device_lost(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return False
    return isinstance(e, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(e)


def _portable(e: BaseException) -> BaseException:
    """The error as the driver can unpickle it (an exception with a custom constructor may not)."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _cause(e: RayTaskError) -> MueBenchError:
    """What a worker raised, as the driver reports it: our own errors as they are (bad input stays exit 2)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, MueBenchError):
        return cause
    return MueBenchError(f"a Ray worker failed: {type(cause).__name__ if cause else 'error'}: "
                         f"{_first_line(cause) if cause else _first_line(e)}")


def check_reachable(address: str) -> None:
    """A short TCP connect to host:port first: Ray itself waits minutes on an address nobody answers on."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpecError(f"run.address {address!r}: give host:port (the head node's GCS port, 6379 unless "
                        "`ray start --head --port` said otherwise), 'auto', or none to start Ray on this machine")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SpecError(f"run.address {address!r}: no Ray head answers there ({e.strerror or e or 'timed out'}); "
                        "start one with `ray start --head`, or fix the address") from None


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())


class RayExecutor:
    def __init__(self, spec: SweepSpec, load: Loader | None = None):
        self.spec, self.load = spec, load
        self.device = torch.device("cpu")  # the workers' kind of device, once placed
        self.workers = 0
        self.handles: list = []
        self.info: list[dict] = []
        self.group = None
        self.started_ray = False

    # --- start: connect, place, load ---------------------------------------------------------------
    def start(self) -> Model:
        self._connect()
        n, bundle = self._plan()
        self.group = placement_group([bundle] * n)
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            raise SpecError(f"run.workers = {n}: the Ray cluster has room for {n} worker(s) of "
                            f"{_describe(bundle)} but not free now (other jobs hold its resources); wait, or ask "
                            "for fewer") from None
        self.workers, gpu = n, bundle.get("GPU", 0) > 0
        self.device = torch.device("cuda" if gpu else "cpu")
        tag = f"mue-bench-{self.spec.name}-{uuid.uuid4().hex[:8]}"
        self.handles = [SweepActor.options(
            name=f"{tag}-w{i}", num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i),
        ).remote(self.spec, self.load, bundle["CPU"], gpu) for i in range(n)]
        models = self._get([h.setup.remote() for h in self.handles], "loading the model")
        self.info = self._get([h.describe.remote() for h in self.handles], "starting")
        return models[0]

    def _connect(self) -> None:
        address = self.spec.run.address
        if address not in (None, "auto"):
            check_reachable(address)
        if ray.is_initialized():  # a session this process already holds (a notebook, the tests): use it
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # a Ray started here runs no dashboard, so no metrics agent: its workers would complain of the missing one
            local = {"_system_config": {"enable_metrics_collection": False}} if address is None else {}
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, **local)
            except ConnectionError as e:
                raise SpecError(f"run.address {address!r}: {_first_line(e)}") from None
        self.started_ray = True

    def _plan(self) -> tuple[int, dict[str, float]]:
        """How many workers, each with which resources; refused here if the cluster cannot hold them."""
        run = self.spec.run
        if run.device not in ("auto", "cpu", "cuda"):
            raise SpecError(f"run.device {run.device!r}: a Ray worker uses the GPU Ray gives it; use auto, cuda "
                            "or cpu")
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        total = {k: sum(r.get(k, 0.0) for r in nodes) for k in ("CPU", "GPU")}
        gpus = run.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if total["GPU"] and run.device != "cpu" else 0.0
        if gpus and run.device == "cpu":
            raise SpecError(f"run.gpus_per_worker = {gpus:g} with run.device = 'cpu'; set one of them differently")
        if run.device == "cuda" and not gpus:
            raise SpecError("run.device = 'cuda': the Ray cluster has no GPU (or gpus_per_worker = 0); use auto or "
                            "cpu")
        bundle = {"CPU": run.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
        fit = sum(min(int(r.get(k, 0.0) / v + 1e-9) for k, v in bundle.items()) for r in nodes)
        n = run.workers
        if n is None and not gpus:
            raise SpecError("run.workers: the Ray cluster has no GPU to give each worker one; give the number of "
                            "CPU workers (run.workers, or --workers)")
        n = n if n is not None else fit
        if n == 0 or n > fit:
            raise SpecError(f"run.workers = {n}: the Ray cluster can place {fit} worker(s) of {_describe(bundle)} "
                            f"(it has {_describe(total)} on {len(nodes)} node(s)); ask for fewer workers, or fewer "
                            "resources per worker")
        return n, bundle

    def _get(self, refs: list, doing: str) -> list:
        try:
            return ray.get(refs)
        except RayTaskError as e:
            raise _cause(e) from None
        except RayActorError as e:
            raise MueBenchError(f"a Ray worker died while {doing}: {_first_line(e)}") from None

    # --- run: units to free workers, points back as they finish --------------------------------------
    def run(self, units: list[list[ExitConfig]], progress) -> Iterator[PointDone]:
        queue = deque(list(u) for u in units)
        tries: dict = {}
        idle = deque(range(len(self.handles)))
        running: dict = {}  # generator -> (worker, the unit's points not yet back)
        reviving: dict = {}  # setup call on a restarted worker -> worker
        while queue or running:
            while queue and idle:
                w, unit = idle.popleft(), queue.popleft()
                running[self.handles[w].run_unit.remote(unit)] = (w, unit)
            if not running and not reviving:
                raise MueBenchError(f"every Ray worker is gone, {sum(map(len, queue))} point(s) left; finished "
                                    "points are saved; rerun the same command to resume")
            ready, _ = ray.wait([*running, *reviving], num_returns=1)
            ref = ready[0]
            if ref in reviving:
                w = reviving.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(w)
                except (RayActorError, RayTaskError) as e:
                    progress.warn(f"Ray worker {w} did not come back ({_first_line(e)}); going on without it")
                continue
            w, unit = running[ref]
            try:
                done = ray.get(next(ref))
            except StopIteration:
                del running[ref]
                idle.append(w)
                continue
            except RayActorError as e:
                del running[ref]
                yield from self._lost(w, unit, queue, tries, progress, e)
                reviving[self.handles[w].setup.remote()] = w
                continue
            except RayTaskError as e:
                raise _cause(e) from None
            unit.remove(next(c for c in unit if c.point_id == done.point_id))
            yield done

    def _lost(self, w: int, unit: list[ExitConfig], queue: deque, tries: dict, progress,
              error: BaseException) -> Iterator[PointDone]:
        """A worker died mid-unit: the unit's remaining points go back to the front of the queue, or fail."""
        if not unit:
            return
        key = encoder_setting(unit[0])
        tries[key] = tries.get(key, 0) + 1
        who = f"Ray worker {w} (pid {self.info[w]['pid']} on {self.info[w]['host']})" if w < len(self.info) else \
            f"Ray worker {w}"
        if tries[key] < TRIES:
            progress.warn(f"{who} died running {unit[0].point_id} ({type(error).__name__}); its {len(unit)} "
                          "remaining point(s) go to the next free worker")
            queue.appendleft(unit)
            return
        for cfg in unit:
            yield PointDone(cfg.point_id, None, WorkerLost(f"its Ray worker died {TRIES} times running it"))

    def close(self) -> None:
        """Stop the workers (a Ctrl-C, a failure or the end), free their placement, leave a Ray we started."""
        if not ray.is_initialized():
            return
        for h in self.handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already gone
                pass
        self.handles = []
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
