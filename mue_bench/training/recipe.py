"""Recipes: how a checkpoint is trained, one JSON file per model (`recipes/`).

A recipe names its trainer and lists its stages in order. Each stage's settings are a config of that trainer
(`TrainConfig` for the built-in model, `FinetuneConfig` for a transformers model), and each stage after the
first continues from the weights the one before it left, so a chain of runs is one file read top to bottom.
A recipe may instead take another's stages and override settings in every one of them
(`{"base": "mue-tiny.json", "override": {"loss": "final"}}`): a control then differs from what it controls
in what its file says and nothing else. Paths inside a recipe are relative to the recipe's own file, so a
recipe means the same thing from any working directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mue_bench.errors import SpecError
from mue_bench.training.finetune import FinetuneConfig, finetune
from mue_bench.training.loop import load_config, load_config_file
from mue_bench.training.tiny import TrainConfig, train_stages

# "finetune": a pretrained model of any family but the built-in one (OFA, Florence-2, T5Gemma 2); "transformers"
# is its earlier name, still read.
Trainer = Literal["mue-tiny", "finetune", "transformers"]
CONFIGS: dict[str, type[TrainConfig] | type[FinetuneConfig]] = {"mue-tiny": TrainConfig, "finetune": FinetuneConfig,
                                                                 "transformers": FinetuneConfig}
# The settings of each trainer that name files or folders: (table, key), table None for the top level.
PATHS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "mue-tiny": ((None, "data_root"),),
    "finetune": (("data", "annotations"), ("data", "images"), ("data", "root"), ("data", "references"),
                 ("model", "checkpoint")),
}
PATHS["transformers"] = PATHS["finetune"]
# Settings that may name a file or something else (a checkpoint is a folder, a hub id or random:<shape>): taken
# from the recipe's folder where that names something that exists, or where the value starts with "./" or "../".
MAYBE_PATHS = {("model", "checkpoint")}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    about: str = ""  # what the recipe trains and why, for the reader (JSON has no comments)
    trainer: Trainer | None = None
    stages: list[dict] | None = Field(default=None, min_length=1)
    base: str | None = None  # another recipe, relative to this file
    override: dict = {}  # settings replaced in every stage of the base

    @model_validator(mode="after")
    def _own_stages_or_a_base(self) -> Recipe:
        if self.base is None and (self.trainer is None or self.stages is None):
            raise ValueError("a recipe names its trainer and stages, or a base recipe to override")
        if self.base is not None and (self.trainer is not None or self.stages is not None):
            raise ValueError("a recipe with a base trains the base's stages: give only override")
        if self.override and self.base is None:
            raise ValueError("override needs a base recipe to override")
        return self


def expand_recipe(path: Path) -> tuple[Trainer, list[TrainConfig] | list[FinetuneConfig]]:
    """The trainer and the validated config of every stage of the recipe at `path`, first stage first."""
    trainer, raw = _raw_stages(Path(path), ())
    if trainer != "mue-tiny" and len(raw) != 1:
        raise SpecError(f"{path}: stages: a fine-tuning recipe has one stage (got {len(raw)})")
    return trainer, [load_config(CONFIGS[trainer], s, f"{path} (stage {i})") for i, s in enumerate(raw, 1)]


def run_recipe(path: Path, out: Path | None, *, steps: int | None = None, stage: int | None = None,
               init: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train the recipe at `path` up to `stage` (default: its last) and save that stage to `out`.

    Earlier stages are trained first and kept in memory only; with `init`, a checkpoint that stage - 1
    produced, only `stage` itself is trained, from it. `steps` replaces the steps of `stage` alone."""
    trainer, stages = expand_recipe(path)
    n = len(stages) if stage is None else stage
    if not 1 <= n <= len(stages):
        raise SpecError(f"{path}: no stage {n} (the recipe has {len(stages)})")
    if init is not None and n == 1:
        raise SpecError("init continues a stage from the checkpoint of the stage before it; stage 1 has none")
    chosen = stages[:n]
    if steps is not None:
        chosen[-1] = chosen[-1].model_copy(update={"steps": steps})
    if trainer != "mue-tiny":
        return finetune(chosen[0], out, log)
    return train_stages(chosen[-1:] if init is not None else chosen, out, log, init)


def _raw_stages(path: Path, seen: tuple[Path, ...]) -> tuple[Trainer, list[dict]]:
    recipe = load_config_file(Recipe, path, "recipe")
    if recipe.base is None:
        assert recipe.trainer is not None and recipe.stages is not None
        return recipe.trainer, [_relative_to(path.parent, s, recipe.trainer) for s in recipe.stages]
    base = path.parent / recipe.base
    if base.resolve() in {p.resolve() for p in (*seen, path)}:
        raise SpecError(f"{path}: base {recipe.base} leads back to itself (a cycle of recipes)")
    if not base.is_file():
        raise SpecError(f"{path}: base: recipe not found: {base}")
    trainer, stages = _raw_stages(base, (*seen, path))
    override = _relative_to(path.parent, recipe.override, trainer)
    return trainer, [_merged(s, override) for s in stages]


def _relative_to(directory: Path, settings: dict, trainer: Trainer) -> dict:
    """`settings` with each relative path it names taken from `directory` (as a path from the working
    directory, so what a checkpoint records reads as it would have been typed there)."""
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    for table, key in PATHS[trainer]:
        holder = settings if table is None else settings.get(table)
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            if ((table, key) in MAYBE_PATHS and not (directory / value).exists()
                    and not value.startswith(("./", "../"))):
                continue
            holder[key] = _from_cwd(directory / value)
    return settings


def _from_cwd(path: Path) -> str:
    absolute = os.path.normpath(os.path.abspath(path))
    try:
        return os.path.relpath(absolute)
    except ValueError:  # another drive than the working directory's
        return absolute


def _merged(stage: dict, override: dict) -> dict:
    merged = dict(stage)
    for key, value in override.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged
