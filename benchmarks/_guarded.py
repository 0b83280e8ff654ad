"""Run one benchmark script as gpu_suite.py does: with the scoring stack unimportable, and its peak memory kept.

The GPU machine has no pycocoevalcap and no Java, so a script the suite runs must never reach them; rather than
trust every import chain to stay lazy, this wrapper makes `import pycocoevalcap` fail loudly, so a chain that
starts to reach the scoring stack fails in the suite's own dry run (tests/test_gpu_suite.py) and not first on a
lent GPU. After the script, its peak device memory goes to the JSON file named by `MUE_SUITE_STATS`.

    python benchmarks/_guarded.py benchmarks/NAME.py [args...]
"""

from __future__ import annotations

import importlib.abc
import json
import os
import runpy
import sys
from pathlib import Path

BLOCKED = ("pycocoevalcap",)


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available on the GPU machine, and the GPU suite must not import it")
        return None


def _peak_memory() -> dict:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"peak_mem_bytes": None}
    return {"peak_mem_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}


def main() -> None:
    script = Path(sys.argv[1])
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))  # as `python benchmarks/NAME.py` would, for `import _common`
    sys.meta_path.insert(0, _Refuse())
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        stats = os.environ.get("MUE_SUITE_STATS")
        if stats:
            Path(stats).write_text(json.dumps(_peak_memory()))


if __name__ == "__main__":
    main()
