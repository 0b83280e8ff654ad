"""The MuE exit engine, written once against `ExitAdapter` (see adapter.py) for every model family.

Names are exported lazily, so that `mue_bench.mue.config` (point ids, used by the command line before any
model work) does not import torch.
"""

from importlib import import_module

_EXPORTS = {"BatchResult": "engine", "Engine": "engine", "run_batch": "engine", "ExitAdapter": "adapter",
            "Streams": "adapter", "ExitConfig": "config"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"mue_bench.mue.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
