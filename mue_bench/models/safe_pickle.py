"""Read a PyTorch pickle checkpoint without ever running code from it.

A `.pt` file is a pickle, and a pickle may name any importable callable (`os.system`, `builtins.eval`) for
the loader to call. Released research checkpoints (fairseq's OFA `.pt` files) carry more than tensors: an
argparse `Namespace` or omegaconf containers for the training configuration, numpy scalars in the trainer's
state. So reading happens in two steps:

1. `torch.load(weights_only=True)`, torch's own restricted unpickler, allowed the harmless extras below.
2. Where that refuses a global, `torch.load` again with our `_InertUnpickler` as its pickle module: tensors
   and plain containers are rebuilt for real from a short allow-list; every other global becomes an
   `Inert` stand-in, a class made here that records the name it stands for and whatever the pickle tries
   to build it with. The named module is never imported and nothing it names is ever called.

What comes back is data: dicts, lists, tensors, `argparse.Namespace`, and `Inert` records, which `plain()`
turns into dicts for reading (omegaconf containers included).
"""

from __future__ import annotations

import argparse
import codecs
import collections
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from mue_bench.errors import SpecError

# Harmless beyond what torch's weights_only unpickler already allows: an attribute bag built with
# `__new__` and a dict update, never with code of the checkpoint's choosing.
EXTRA_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


class Inert:
    """Stands in for a class or function a checkpoint names but we do not trust: holds its name and the
    arguments and state the pickle gives it. Never calls anything."""

    qualname = "?"  # set on each generated subclass: "module.name" of what this stands for

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.entries = args, kwargs, None, [], {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the "class": keep, do nothing
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.state = state

    def append(self, item: Any) -> None:  # APPEND(S) on what claims to be a list
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on what claims to be a dict
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<inert {self.qualname} args={self.args!r} state={self.state!r}>"


_STAND_INS: dict[str, type[Inert]] = {}


def stand_in(module: str, name: str) -> type[Inert]:
    """The one `Inert` subclass for `module.name` (a type, so pickle's NEWOBJ accepts it)."""
    qualname = f"{module}.{name}"
    if qualname not in _STAND_INS:
        _STAND_INS[qualname] = type(f"Inert[{qualname}]", (Inert,), {"qualname": qualname})
    return _STAND_INS[qualname]


def _real_globals() -> dict[tuple[str, str], Any]:
    """What the fallback rebuilds for real: tensors (torch's own rebuild functions, as its weights_only
    unpickler allows them), dtypes, sizes, devices, and plain containers. Storages are handled by torch's
    wrapper before a name reaches us."""
    real: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("argparse", "Namespace"): argparse.Namespace,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 writes bytes
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    }
    for fn in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"):
        real[("torch._utils", fn)] = getattr(torch._utils, fn)
    return real


_REAL = _real_globals()


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REAL:
            return _REAL[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return stand_in(module, name)


def _inert_load(file: Any, **kwargs: Any) -> Any:
    return _InertUnpickler(file, **kwargs).load()


# What torch.load needs of a `pickle_module`: an Unpickler class (torch subclasses it, adding storages) and,
# for the pre-zip format's header records, `load`.
_inert_pickle = types.SimpleNamespace(Unpickler=_InertUnpickler, load=_inert_load, __name__="mue_bench_inert_pickle")


def load_checkpoint(path: Path) -> Any:
    """The checkpoint's contents on the CPU, nothing in it executed. A missing, truncated or foreign file is
    a `SpecError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"checkpoint file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # torch's zip archive, or a bare pickle
        raise SpecError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(EXTRA_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a global weights_only refuses, or a broken file: the fallback tells which
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert_pickle)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise SpecError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def plain(obj: Any) -> Any:
    """Nested containers as plain dicts and lists for reading: a Namespace becomes its attribute dict, an
    omegaconf DictConfig/ListConfig (as an `Inert` record) its content, any other `Inert` its state."""
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Inert):
        return plain(_inert_content(obj))
    return obj


def _inert_content(obj: Inert) -> Any:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
    if isinstance(state, dict):
        if obj.qualname.startswith("omegaconf."):
            # DictConfig/ListConfig keep their values under _content; leaf nodes (AnyNode, StringNode...) _val
            for key in ("_content", "_val"):
                if key in state:
                    return state[key]
        return state
    if obj.items:
        return obj.items
    if obj.entries:
        return obj.entries
    return state if state is not None else {"inert": obj.qualname}
