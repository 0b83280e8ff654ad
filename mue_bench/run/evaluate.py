"""One threshold triple against the full model on the built-in benchmark, as `mue-bench eval` asks: a
one-point sweep spec built from options, run in a scratch folder, nothing left behind."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from pydantic import ValidationError

from mue_bench.errors import SpecError
from mue_bench.run.runner import Progress, SweepOptions, SweepOutcome, run_sweep
from mue_bench.spec import SweepSpec, validation_problem

# The `mue-bench eval` option behind each spec field it sets.
OPTIONS = {"data.task": "--task", "grid.tau_img": "--img", "grid.tau_txt": "--txt", "grid.tau_dec": "--dec",
           "model.checkpoint": "--checkpoint", "data.split": "--split", "grid.kv_fill": "--kv-fill",
           "grid.encoder_mode": "--encoder-mode", "grid.dec_schedule": "--dec-schedule",
           "decoding.num_beams": "--num-beams",
           "data.root": "--data-root", "data.version": "--data-version", "data.limit": "--limit",
           "run.device": "--device"}


@dataclass(frozen=True)
class EvalRequest:
    task: str = "caption"
    tau_img: float = 0.99
    tau_txt: float = 0.7
    tau_dec: float = 0.9
    checkpoint: str = "mue-tiny"
    split: str = "test"
    kv_fill: str = "copy"
    encoder_mode: str = "freeze"
    dec_schedule: str = "constant"
    num_beams: int = 1
    data_root: str | None = None
    data_version: int | None = None
    limit: int | None = None
    device: str | None = None

    def spec(self, out_dir: str) -> SweepSpec:
        """The one-point spec; a bad option is named as the user typed it ("--kv-fill: ...")."""
        r = self
        raw = {
            "name": "eval", "model": {"checkpoint": r.checkpoint},
            "data": {"task": r.task, "split": r.split, "root": r.data_root, "limit": r.limit}
                    | ({} if r.data_version is None else {"version": r.data_version}),
            "decoding": {"num_beams": r.num_beams, "no_repeat_ngram": 3 if r.task == "caption" else 0},
            "grid": {"tau_img": [r.tau_img], "tau_txt": [r.tau_txt], "tau_dec": [r.tau_dec], "kv_fill": [r.kv_fill],
                     "encoder_mode": [r.encoder_mode], "dec_schedule": [r.dec_schedule]},
            "run": {"device": r.device or "auto"}, "output": {"dir": out_dir},
        }
        try:
            return SweepSpec.model_validate(raw)
        except ValidationError as e:
            loc, msg = validation_problem(e)
            option = OPTIONS.get(loc)
            if option is None:  # a field eval sets itself: a bug, named by the spec field it sits in
                raise SpecError(f"options: {loc}: {msg}") from None
            # eval puts each threshold and setting in a one-element list; the user typed the bare value
            raise SpecError(f"{option}: {msg.replace('(got [', '(got ').replace('])', ')')}") from None


def evaluate(request: EvalRequest, progress: Progress | None = None) -> SweepOutcome:
    with tempfile.TemporaryDirectory() as out:
        return run_sweep(request.spec(out), SweepOptions(), progress)
