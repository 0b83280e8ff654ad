"""Training with MuE's layer-wise loss: the built-in model (tiny.py) and transformers models (finetune.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mue_bench.errors import SpecError


def train_from_config(config: Path, out: Path, steps: int | None = None, init: Path | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """Run a training config: one with a [model] table fine-tunes a transformers model, any other trains the
    built-in model (with `init`, a later stage starts from that checkpoint instead of retraining earlier ones)."""
    try:
        finetuning = "model" in json.loads(config.read_text())
    except (OSError, ValueError):
        finetuning = False  # the config loader reports the problem
    if finetuning:
        from mue_bench.training.finetune import FinetuneConfig, finetune

        cfg = FinetuneConfig.from_file(config)
        return finetune(cfg.model_copy(update={"steps": steps}) if steps else cfg, out, log=log)
    from mue_bench.training.tiny import TrainConfig, train

    tiny = TrainConfig.from_file(config)
    if steps:
        tiny = tiny.model_copy(update={"steps": steps})
    if init is not None and tiny.continue_from is None:
        raise SpecError("--init only applies to a config with continue_from")
    return train(tiny, out, log=log, init=init)
