"""The GPU suite's dry run: the command a lent GPU will run, on CPU with tiny models, so it cannot rot unseen.

A GPU comes rarely and for minutes; a suite that fails there on an import or an argument wastes the loan. This
runs benchmarks/gpu_suite.sh itself with `--tiny` (tiny models, batch 1 and 2, one repeat) in a subprocess, as
the device would, with the scoring stack refused by benchmarks/_guarded.py as it is missing there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402


def test_the_suite_dry_run_finishes_every_step_and_writes_every_table(tmp_path):
    out = tmp_path / "gpu_results.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert text.startswith("# GPU suite results") and "- device: " in text and "- date: " in text
    assert text.count("| ok |") == len(gpu_suite.STEPS), text
    for step in gpu_suite.STEPS:
        assert f"## {step.title}" in text
    # each step printed its table: a header line and rows under it
    assert text.count("realiz.") >= 2 * 3 + 2 and "engine / generate" in text and "compact x" in text
    assert "sweep, shared by exit certificates" in text and "lower bound" in text
    assert text.count("exit / eager") == 3 and "lagged / eager" in text  # eager vs lagged, side by side


def test_a_script_that_reaches_the_scoring_stack_fails_in_the_suite(tmp_path):
    script = tmp_path / "uses_scoring.py"
    script.write_text("from pycocoevalcap.cider.cider import Cider\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_guarded.py"), str(script)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "must not import it" in done.stderr


def test_a_step_that_fails_or_overruns_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    (tmp_path / "fails.py").write_text("import sys\nprint('half a table')\nsys.exit('broken')\n")
    (tmp_path / "slow.py").write_text("import time\nprint('first row', flush=True)\ntime.sleep(30)\n")
    monkeypatch.setattr(gpu_suite, "HERE", tmp_path)
    (tmp_path / "_guarded.py").write_text((ROOT / "benchmarks" / "_guarded.py").read_text())
    failing = gpu_suite.Step("fails", "fails.py", (), 1.0, ())
    slow = gpu_suite.Step("slow", "slow.py", (), 1.0, ())
    text, status, _, _ = gpu_suite.run_step(failing, 30, False, sys.executable)
    assert status == "exit 1" and "half a table" in text and "broken" in text
    text, status, wall, _ = gpu_suite.run_step(slow, 3, False, sys.executable)
    assert status.startswith("timed out") and "first row" in text and wall < 20
