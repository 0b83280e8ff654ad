"""The MuE exit engine, written once against `ExitAdapter` (see adapter.py) for every model family."""

from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import BatchResult, run_batch

__all__ = ["BatchResult", "ExitAdapter", "ExitConfig", "Streams", "run_batch"]
