"""Training with MuE's layer-wise task loss: one loop and one loss for every family (`loop`), the built-in
model's and the transformers models' hooks (`tiny`, `finetune`), and the recipes that say how each
checkpoint is made (`recipe`)."""

from mue_bench.training.recipe import expand_recipe, run_recipe

__all__ = ["expand_recipe", "run_recipe"]
