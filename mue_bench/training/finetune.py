"""MuE fine-tuning of pretrained models (OFA, Florence-2, T5Gemma 2) with the layer-wise task loss.

A pretrained model was trained to answer from its last decoder layer only, so its intermediate layers
make poor exits; MuE fine-tunes it so that every layer's output, put through the model's own head,
predicts the target (the authors' `MuE_Task_Loss`). Data come from the same [data] tables sweeps use.
Gradient accumulation and mixed precision (bf16/fp16 autocast, a grad scaler for fp16) are there for
real sizes on a GPU; checkpoints are written as safetensors folders (`save_pretrained` for transformers models,
tokenizer or processor included), so `model.checkpoint = "<out dir>"` in a sweep spec loads them. A family
takes part by giving its adapter `target_ids`, `teacher_forced` and `save` (models/hf/base.py, models/ofa). OFA
entailment trains on the prompt it is evaluated on (`model.add_caption`, `model.prompt_type`): the decoder reads
the same prompt a ranking pass scores after, and the loss is on the answer and </s> only, as the authors'
MuE_Task_Loss reads their targets (padding elsewhere). With `answers` (SNLI-VE's no / yes / maybe), the logits
there are restricted to the answer trie, as the authors' dataset and criterion restrict them (training/loop.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mue_bench.errors import MueBenchError, SpecError
from mue_bench.spec import DataSpec, ModelSpec, check_answers, check_ofa_prompt
from mue_bench.training.loop import layer_losses, load_config_file, optimise, target_text

if TYPE_CHECKING:
    from mue_bench.data.loaders import Sample
    from mue_bench.models.ofa.adapter import OFAAdapter


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSpec
    data: DataSpec
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)  # optimiser step every grad_accum batches
    lr: float = Field(default=2e-5, gt=0)
    warmup: int = Field(default=100, ge=0)
    weight_decay: float = 0.01
    loss: Literal["layerwise", "final"] = "layerwise"
    loss_weighting: Literal["token", "sample"] = "token"  # see mue_bench.training.loop.layer_losses
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)  # OFA and the authors' MuE runs: 0.1
    precision: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast dtype on GPU
    max_target_len: int = Field(default=32, ge=2)
    device: str = "auto"
    seed: int = 0
    log_every: int = Field(default=50, ge=1)
    # The closed answer set the loss restricts the logits to at the answer and </s> positions (the answer trie,
    # as a sweep's decoding.answers restricts decoding): the authors' SNLI-VE training, ["no", "yes", "maybe"].
    # Empty: the loss is over the whole vocabulary.
    answers: tuple[str, ...] = ()

    @field_validator("answers")
    @classmethod
    def _answers_distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_answers(v)

    @model_validator(mode="after")
    def _ofa_prompt_settings(self) -> FinetuneConfig:
        check_ofa_prompt(self.model, self.data)  # prompt_type needs no rank mode here: training reads no search
        return self

    @model_validator(mode="after")
    def _answers_are_ofa_entailment(self) -> FinetuneConfig:
        """The trie masks the authors' OFA SNLI-VE loss (their snli_ve task builds it); a caption has no closed
        set, and the other families' targets are not laid out as OFA's answer + </s>."""
        if not self.answers:
            return self
        if self.model.family != "ofa":
            raise ValueError(f"answers restricts OFA's entailment loss to the answer trie; {self.model.family} "
                             "has none: remove answers")
        if self.data.task != "entailment":
            raise ValueError(f"answers is a closed answer set for data.task = \"entailment\"; \"{self.data.task}\" "
                             "targets are free text: remove answers")
        return self

    @classmethod
    def from_file(cls, path: Path) -> FinetuneConfig:
        return load_config_file(cls, path)


def finetune(cfg: FinetuneConfig, out: Path | None, log: Callable[[str], None] = print) -> dict:
    # Imported here: reading a recipe should not pay for the model registry and data preparation.
    from mue_bench.data.loaders import check_images
    from mue_bench.models.registry import load_adapter, resolve_device
    from mue_bench.run.prepare import check_premises, load_samples

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    samples = load_samples(cfg.data)
    check_premises(cfg.model, cfg.data, samples)
    check_images(samples)
    if cfg.model.family == "mue-tiny":
        raise MueBenchError("model.family \"mue-tiny\" is trained with a recipe whose trainer is \"mue-tiny\" "
                            "(recipes/mue-tiny.json)")
    adapter = load_adapter(cfg.model, device, "float32")
    use_amp = device.type == "cuda" and cfg.precision != "float32"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.precision, torch.float32)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "float16")

    answers = answer_trie(adapter, cfg, samples)

    def batch_losses() -> torch.Tensor:
        chosen = [samples[i] for i in rng.integers(len(samples), size=cfg.batch_size)]
        batch = adapter.prepare(chosen).to(device)
        labels = adapter.target_ids([target_text(s, rng) for s in chosen], cfg.max_target_len).to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext():
            states, targets = adapter.teacher_forced(batch, labels)
            return layer_losses(adapter.logprobs, states, targets, adapter.pad_id, cfg.loss, cfg.loss_weighting,
                                cfg.label_smoothing, answers)

    summary = optimise(adapter.model, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       schedule=lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)), batch_losses=batch_losses,
                       grad_accum=cfg.grad_accum, scaler=scaler, log=log, log_every=cfg.log_every)
    if out is not None:
        adapter.save(out)
        (out / "mue_finetune_config.json").write_text(cfg.model_dump_json(indent=2))
        (out / "mue_finetune_summary.json").write_text(json.dumps(summary, indent=2))
    return {"adapter": adapter, **summary}


def answer_trie(adapter: OFAAdapter, cfg: FinetuneConfig, samples: list[Sample]) -> tuple[tuple[int, ...], ...]:
    """`cfg.answers` as token ids ending with </s> (the ids a ranking pass scores), checked before any training:
    every sample's target must be one of them, or its loss under the trie would be infinite."""
    if not cfg.answers:
        return ()
    if getattr(adapter, "tokenizer", None) is None:
        raise SpecError("answers: this OFA checkpoint has no tokenizer (vocab.json, merges.txt) to spell the answers "
                        "with; convert it with --tokenizer, or remove answers")
    answers = tuple(adapter.answer_ids(a) for a in cfg.answers)
    eos = adapter.eos_id
    for label in sorted({target_text(s) for s in samples}):
        ids = adapter.target_ids([label], cfg.max_target_len)[0].tolist()
        if tuple(ids[: ids.index(eos) + 1]) not in answers:
            raise SpecError(f"answers {list(cfg.answers)}: the data's label {label!r} is not one of them; list it "
                            "in answers, or remove answers")
    return answers
