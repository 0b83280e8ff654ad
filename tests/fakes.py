"""A fake exit model for orchestration tests: it exits where it is told, answers by a fixed rule and records
every run, so runner and CLI tests of resume, failures, progress and exit codes need no real model and no
Java (entailment is scored by accuracy and label agreement, in Python)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mue_bench.data.loaders import LABEL_WORDS, Sample
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import BatchResult, SampleExits
from mue_bench.mue.search import DecodingConfig
from mue_bench.run.prepare import load_samples, prepare_batches

LAYERS = 6
WORDS = sorted(set(LABEL_WORDS.values()))


def exit_layer(tau: float) -> int:
    """Where a stream exits under threshold tau: every layer above 1, fewer the lower tau."""
    return LAYERS if tau > 1 else max(1, min(LAYERS, round(tau * LAYERS)))


class FakeBatch(list):
    """A batch of samples, as the fake engine prepares them; moving it to a device changes nothing."""

    def to(self, device) -> FakeBatch:
        return self


@dataclass
class FakeEngine:
    """Exits at `exit_layer` of each threshold (or at a fixed exit); a sample whose two encoder streams use at
    least LAYERS layers together answers its own label, any other answers "no". Points in `fail` raise; a batch
    larger than `max_batch` runs out of memory."""

    fail: set[str] = field(default_factory=set)
    runs: list[tuple[str, bool]] = field(default_factory=list)  # (point id, inside a timed region), in order
    native_encoder_mode: str = "split"
    timing: bool = False  # set by FakeTimer around the work it times
    delay_s: float = 0.0  # each run takes this long (a sweep slow enough to interrupt from outside)
    depth: tuple[int, int] = (LAYERS, LAYERS)
    decoding: DecodingConfig = DecodingConfig(1, 2, 0)
    max_batch: int | None = None
    fail_message: str = "CUDA out of memory (fake)"  # what a point in `fail` raises (an OOM unless told)

    def prepare(self, samples: list[Sample]) -> FakeBatch:
        return FakeBatch(samples)

    def text(self, tokens: list[int]) -> str:
        return WORDS[tokens[0]]

    def run(self, batch: list[Sample], cfg: ExitConfig) -> tuple[list[Sample], ExitConfig]:
        if cfg.point_id in self.fail:
            raise RuntimeError(self.fail_message)
        if self.max_batch is not None and len(batch) > self.max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake): a batch of {len(batch)}")
        self.runs.append((cfg.point_id, self.timing))
        time.sleep(self.delay_s)
        return batch, cfg

    def collect(self, raw: tuple[list[Sample], ExitConfig], cfg: ExitConfig) -> BatchResult:
        batch, _ = raw
        img, txt, dec = cfg.fixed_exit or (exit_layer(cfg.tau_img), exit_layer(cfg.tau_txt), exit_layer(cfg.tau_dec))
        answer = [s.label if img + txt >= LAYERS else "no" for s in batch]
        return BatchResult([SampleExits([WORDS.index(a)], img, txt, [dec], [], [], [[]], float(img + txt + dec))
                            for a in answer])

    def run_batch(self, batch: list[Sample], cfg: ExitConfig) -> BatchResult:
        return self.collect(self.run(batch, cfg), cfg)

    def grid_reuse(self) -> FakeReuse:
        return FakeReuse(self)


@dataclass
class FakeReuse:
    engine: FakeEngine

    def evaluate(self, batch_index: int, first_sample: int, batch: list[Sample], cfg: ExitConfig) -> BatchResult:
        return self.engine.run_batch(batch, cfg)

    def take_executions(self) -> int:
        return 0


@dataclass
class FakeTimer:
    """Times nothing: the n-th timed call, a run of point `pid`, lasts `seconds(pid, n)` (default 1 s)."""

    engine: FakeEngine
    seconds: Callable[[str, int], float] = lambda pid, n: 1.0
    calls: int = 0

    def time(self, fn):
        self.engine.timing = True
        try:
            out = fn()
        finally:
            self.engine.timing = False
        self.calls += 1
        return out, self.seconds(self.engine.runs[-1][0], self.calls - 1)

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> int | None:
        return None


def fake_loader(engine: FakeEngine):
    """A `run_sweep(load=...)` that serves the spec's real samples to the fake engine."""

    def load(spec, device):
        samples = load_samples(spec.data)
        engine.decoding = DecodingConfig(1, 2, 0, num_beams=spec.decoding.num_beams, max_len=spec.decoding.max_len)
        return engine, samples, prepare_batches(engine, samples, spec.run.batch_size, device)

    return load
