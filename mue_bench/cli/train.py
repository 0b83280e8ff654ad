"""`mue-bench train`: train or fine-tune with the MuE layer-wise loss, from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import handled


def train(
    recipe: Annotated[Path, typer.Option("--recipe", "--config", help="Training recipe (JSON, recipes/).")]
    = Path("recipes/mue-tiny.json"),
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")] = Path("checkpoints/mue-tiny"),
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of steps of that stage.")] = None,
    stage: Annotated[int | None, typer.Option(min=1, help="Train up to this stage (default: the last); save it.")]
    = None,
    init: Annotated[Path | None, typer.Option(help="Start the stage from this checkpoint (which the stage before "
                                                   "it produced) instead of retraining the earlier stages.")] = None,
) -> None:
    """Train with the MuE layer-wise loss from a recipe: the built-in model (recipes/mue-tiny.json reproduces
    the shipped checkpoint), or fine-tune a transformers model (recipes/finetune-florence2-coco.json)."""
    from mue_bench.training import run_recipe

    with handled():
        summary = run_recipe(recipe, out, steps=steps, stage=stage, init=init, log=render.line)
    render.line(f"wrote {out} ({summary['steps']} steps, {summary['wall_time_s']} s)")
