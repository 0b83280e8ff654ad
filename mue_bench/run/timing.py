"""Timing model work only, without stalling the GPU (DESIGN.md §3).

On CUDA a pair of events brackets the region and the host waits only when the time is read; on CPU
`perf_counter` is exact because the work is synchronous. The runner takes a timer as a parameter, so
tests can script the times it reads.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from mue_bench.models.registry import device_name

T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run fn and return (its result, seconds of device work)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Timer(Protocol):
    def time(self, fn: Callable[[], T]) -> tuple[T, float]: ...

    def reset_peak_memory(self) -> None: ...

    def peak_memory(self) -> int | None: ...


class DeviceTimer:
    """Times work on one device, and reads its peak memory (CUDA only)."""

    def __init__(self, device: torch.device):
        self.device = device

    def time(self, fn: Callable[[], T]) -> tuple[T, float]:
        return timed(fn, self.device)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None


@dataclass(frozen=True)
class Origin:
    """Where a point was timed, written on each of its rows: a point's pairs are all taken on one worker, so
    its time saving divides by that device's own full-model times."""

    host: str
    device_name: str

    @classmethod
    def of(cls, device: torch.device) -> Origin:
        return cls(socket.gethostname(), device_name(device))
