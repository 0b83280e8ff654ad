"""Training the built-in model: its batches, schedule and encoder exits, around the shared loop.

Captioning and entailment are trained together, entailment as a generated label word (as in OFA). A run is a
list of stages (a recipe, `mue_bench.training.recipe`): the first builds the tokenizer and the model, each
later one continues from the weights the one before it left.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, create_model, model_validator

from mue_bench.data import shapes
from mue_bench.data.loaders import Sample, load_karpathy, load_snli_ve
from mue_bench.models.tiny.inputs import collate, load_pixels, pad, prompt
from mue_bench.models.tiny.model import ARCHITECTURE, TinyConfig, TinyOFA
from mue_bench.models.tiny.tokenizer import WordTokenizer
from mue_bench.training.loop import layer_losses, load_config_file, optimise, target_text


def _architecture_fields() -> dict:
    """TinyConfig's recipe-chosen fields, with its types and defaults: the model owns its architecture."""
    hints = typing.get_type_hints(TinyConfig, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(TinyConfig)}
    return {name: (hints[name], defaults[name]) for name in ARCHITECTURE}


_Architecture = create_model("_Architecture", __config__=ConfigDict(extra="forbid"), **_architecture_fields())


class TrainConfig(_Architecture):
    """One training stage of the built-in model: its architecture (TinyConfig's fields) and how it is trained."""

    model_config = ConfigDict(extra="forbid")

    data_root: str = ""  # "" (none named): shapes.default_root(data_version)
    data_seed: int = 0
    # The shapes generator version (data/shapes.py); every committed config names its own.
    data_version: Literal[2, 3, 4] = shapes.DEFAULT_VERSION
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    loss: Literal["layerwise", "final"] = "layerwise"
    threads: int = 2
    entailment_fraction: float = 0.5
    # "token": cross-entropy averaged over all target tokens (captions dominate: ~10 tokens vs 1 label);
    # "sample": averaged within each sample first, so both tasks weigh what their share of the batch says.
    loss_weighting: Literal["token", "sample"] = "token"
    # Std of the text/decoder position and modality embeddings at init. None keeps PyTorch's N(0, 1): rows
    # ~10x the norm of the token embeddings (std 0.02), so the encoder sees mostly where a word is, not which.
    # 0.02 (as GPT-2 and OFA) trains faster and grounds entailment better (studies/NOTEBOOK.md).
    embedding_std: float | None = None
    # Std of the image patch position embeddings at init. None keeps the model's 0.02: rows ~7x smaller than
    # how much patch contents differ (and ~18x after training), so the encoder barely sees where a patch is.
    image_pos_std: float | None = None
    # Share of each batch whose image and text streams each stop after a random number of encoder layers
    # (uniform over 1..enc_layers, per sample and stream), as the engine's `freeze` exits do. The layer-wise
    # loss trains the decoder's exits only; this also teaches the decoder to read early-exited encoder states.
    encoder_exit_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _default_data_root(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("data_root"):
            version = data.get("data_version", cls.model_fields["data_version"].default)
            return data | {"data_root": shapes.default_root(version)}
        return data

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        return load_config_file(cls, path)

    def architecture(self) -> dict:
        return {name: getattr(self, name) for name in ARCHITECTURE}


def encoder_exits(rng: np.random.Generator, batch: int, layers: int, fraction: float,
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-sample encoder layers of the image and text streams: all of them, except for a `fraction` of the
    samples whose streams each stop after a uniform 1..layers (for TinyOFA.encode's `stop`)."""
    if fraction == 0:
        return None
    exits = rng.random(batch) < fraction
    img, txt = (torch.from_numpy(np.where(exits, rng.integers(1, layers + 1, size=batch), layers))
                for _ in range(2))
    return img, txt


def training_samples(root: Path, split: str) -> list[Sample]:
    return (load_karpathy(root / "dataset_coco.json", root, split)
            + load_snli_ve(root / f"snli_ve_{split}.jsonl", root / "images", "{id}.png"))


def train_stages(stages: list[TrainConfig], out: Path | None, log: Callable[[str], None] = print,
                 init: Path | None = None) -> dict:
    """Train `stages` in order, each from the weights the one before it left; only the last is saved to `out`.
    With `init` (a checkpoint the stage before the first given one produced) the first continues from it."""
    start = None
    if init is not None:
        start = TinyOFA.load(init), WordTokenizer.load(init / "tokenizer.json")
    for i, cfg in enumerate(stages):
        result = train(cfg, out if i == len(stages) - 1 else None, log, start)
        start = result["model"], result["tokenizer"]
    return result


def _new_model(cfg: TrainConfig, samples: list[Sample]) -> tuple[TinyOFA, WordTokenizer]:
    captions = [s for s in samples if s.task == "caption"]
    texts = [prompt(s) for s in samples] + [r for s in captions for r in s.references] + ["yes no maybe"]
    tok = WordTokenizer.build(texts)
    model_cfg = TinyConfig(vocab_size=len(tok), **cfg.architecture())
    torch.manual_seed(cfg.seed)
    model = TinyOFA(model_cfg)
    with torch.no_grad():
        if cfg.embedding_std is not None:
            for table in (model.text_pos, model.dec_pos, model.modality):
                table.weight.normal_(0.0, cfg.embedding_std)
        if cfg.image_pos_std is not None:
            model.image_pos.normal_(0.0, cfg.image_pos_std)
    return model, tok


def train(cfg: TrainConfig, out: Path | None, log: Callable[[str], None] = print,
          start: tuple[TinyOFA, WordTokenizer] | None = None) -> dict:
    """One stage: from `start` (a model and its tokenizer), or a new model built from `cfg`'s architecture."""
    torch.set_num_threads(cfg.threads)
    root = shapes.ensure(Path(cfg.data_root), cfg.data_seed, version=cfg.data_version)
    samples = training_samples(root, "train")
    captions = [s for s in samples if s.task == "caption"]
    entail = [s for s in samples if s.task == "entailment"]
    model, tok = _new_model(cfg, samples) if start is None else start
    model_cfg = model.cfg
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    exit_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: batches stay those without encoder exits
    pixels = {p: load_pixels(p, model_cfg.image_size) for p in {s.image for s in samples}}

    def batch_losses() -> torch.Tensor:
        half = cfg.batch_size - round(cfg.batch_size * cfg.entailment_fraction)
        batch = ([captions[i] for i in rng.integers(len(captions), size=half)]
                 + [entail[i] for i in rng.integers(len(entail), size=cfg.batch_size - half)])
        inputs = collate([pixels[s.image] for s in batch], [prompt(s) for s in batch], tok)
        targets = [tok.encode(target_text(s, rng)) for s in batch]
        dec_in, _ = pad([[tok.bos_id] + t[:-1] for t in targets], tok.pad_id)
        dec_out, _ = pad(targets, tok.pad_id)
        enc_out, enc_mask = model.encode(inputs.images, inputs.ids, inputs.mask,
                                         encoder_exits(exit_rng, len(batch), model_cfg.enc_layers,
                                                       cfg.encoder_exit_fraction))
        states = model.decoder_states(dec_in, enc_out, enc_mask)
        return layer_losses(model.logits, states, dec_out, tok.pad_id, cfg.loss, cfg.loss_weighting)

    def cosine(step: int) -> float:
        return min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * min(step, cfg.steps) / cfg.steps))

    summary = optimise(model, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule=cosine,
                       batch_losses=batch_losses, log=log)
    if out is not None:
        model.save(out, {"name": "mue-tiny", "train_loss": cfg.loss})
        tok.save(out / "tokenizer.json")
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return {"model": model, "tokenizer": tok, **summary}
