"""`mue-bench train`: train or fine-tune with the MuE layer-wise loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import handled


def train(
    config: Annotated[Path, typer.Option(help="Training config (JSON).")] = Path("configs/train-mue-tiny.json"),
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")] = Path("checkpoints/mue-tiny"),
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of steps.")] = None,
    init: Annotated[Path | None, typer.Option(help="For a config with continue_from: start from this checkpoint "
                                                   "(which that config produced) instead of retraining it.")] = None,
) -> None:
    """Train with the MuE layer-wise loss: the built-in model (reproduces the shipped checkpoint), or, for a
    config with a "model" entry, fine-tune a transformers model (Florence-2, T5Gemma 2) on a dataset."""
    from mue_bench.training import train_from_config

    with handled():
        summary = train_from_config(config, out, steps, init, log=render.line)
    render.line(f"wrote {out} ({summary['steps']} steps, {summary['wall_time_s']} s)")
