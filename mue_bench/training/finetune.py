"""MuE fine-tuning of transformers models (Florence-2, T5Gemma 2) with the layer-wise task loss.

A pretrained model was trained to answer from its last decoder layer only, so its intermediate layers
make poor exits; MuE fine-tunes it so that every layer's output, put through the model's own head,
predicts the target (the authors' `MuE_Task_Loss`). Data come from the same [data] tables sweeps use.
Gradient accumulation and mixed precision (bf16/fp16 autocast, a grad scaler for fp16) are there for
real sizes on a GPU; checkpoints are written with `save_pretrained` (safetensors), processor included,
so `model.checkpoint = "<out dir>"` in a sweep spec loads them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mue_bench.data.loaders import Sample, check_images
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.registry import load_adapter, resolve_device
from mue_bench.run.prepare import load_samples
from mue_bench.spec import DataSpec, ModelSpec, describe_validation_error


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
    precision: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast dtype on GPU
    max_target_len: int = Field(default=32, ge=2)
    device: str = "auto"
    seed: int = 0
    log_every: int = Field(default=50, ge=1)

    @classmethod
    def from_file(cls, path: Path) -> FinetuneConfig:
        if not path.is_file():
            raise SpecError(f"training config not found: {path}")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as e:
            raise SpecError(describe_validation_error(e, str(path))) from None


def target_text(sample: Sample, rng: random.Random) -> str:
    return rng.choice(sample.references) if sample.task == "caption" else sample.label


def layerwise_loss(adapter, states: list[torch.Tensor], labels: torch.Tensor, which: str) -> torch.Tensor:
    """Sum over decoder layers of the cross-entropy of that layer's output through the model's head."""
    chosen = states if which == "layerwise" else states[-1:]
    losses = [F.nll_loss(adapter.logprobs(h).transpose(1, 2), labels, ignore_index=adapter.pad_id) for h in chosen]
    return torch.stack(losses)


def finetune(cfg: FinetuneConfig, out: Path | None, log: Callable[[str], None] = print) -> dict:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    samples = load_samples(cfg.data)
    check_images(samples)
    adapter = load_adapter(cfg.model, device, "float32")
    if not hasattr(adapter, "decoder_states"):
        raise MueBenchError(f"model.family {cfg.model.family!r} is trained with `mue-bench train --config` "
                            "configs for the built-in model")
    model = adapter.model.train()
    use_amp = device.type == "cuda" and cfg.precision != "float32"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.precision, torch.float32)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "float16")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    history: list[list[float]] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        per_layer = None
        for _ in range(cfg.grad_accum):
            chosen = [samples[rng.randrange(len(samples))] for _ in range(cfg.batch_size)]
            batch = adapter.prepare(chosen).to(device)
            labels = adapter.target_ids([target_text(s, rng) for s in chosen], cfg.max_target_len).to(device)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
            with ctx:
                losses = layerwise_loss(adapter, adapter.decoder_states(batch, labels), labels, cfg.loss)
            scaler.scale(losses.sum() / cfg.grad_accum).backward()
            per_layer = losses.detach() if per_layer is None else per_layer + losses.detach()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        assert per_layer is not None
        history.append((per_layer / cfg.grad_accum).tolist())
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            layers = " ".join(f"{v:.3f}" for v in history[-1])
            log(f"step {step:5d}  loss per decoder layer [{layers}]  {time.perf_counter() - start:.0f}s")
    model.eval()
    summary = {"steps": cfg.steps, "wall_time_s": round(time.perf_counter() - start, 1),
               "loss_per_layer_first": history[0], "loss_per_layer_last": history[-1]}
    if out is not None:
        adapter.save(out)
        (out / "mue_finetune_config.json").write_text(cfg.model_dump_json(indent=2))
        (out / "mue_finetune_summary.json").write_text(json.dumps(summary, indent=2))
    return {"adapter": adapter, **summary}
