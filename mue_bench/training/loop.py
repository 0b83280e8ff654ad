"""What every family's training shares: the layer-wise loss, the target a sample trains toward, the
config loader, and the optimisation loop.

Why one of each: early exit hands an intermediate decoder state to the LM head, so every layer must be a
usable output. The authors' `MuE_Task_Loss` applies the head (after the final norm) to each decoder layer's
output and sums the cross-entropies; `loss="final"` trains the usual way, as a control. Written once, the
built-in model and a fine-tuned transformers model are trained by the same definition, and a change to it
reaches both. A family supplies only what differs: how it draws a batch and runs its decoder, its learning
rate schedule, and how it saves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ValidationError

from mue_bench.data.loaders import Sample
from mue_bench.errors import SpecError
from mue_bench.spec import describe_validation_error

Config = TypeVar("Config", bound=BaseModel)


def load_config(model: type[Config], raw: dict, source: str) -> Config:
    """`raw` validated as `model`; a bad field is one line naming where it came from: "<source>: <field>: <why>"."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, source)) from None


def load_config_file(model: type[Config], path: Path, what: str = "training config") -> Config:
    if not path.is_file():
        raise SpecError(f"{what} not found: {path}")
    try:
        return model.model_validate_json(path.read_text())
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, str(path))) from None


def target_text(sample: Sample, rng: np.random.Generator | None = None) -> str:
    """What the decoder should emit: a reference caption (a random one when training) or the label word."""
    if sample.task == "caption":
        return sample.references[0] if rng is None else sample.references[rng.integers(len(sample.references))]
    return sample.label


def layer_losses(head: Callable[[torch.Tensor], torch.Tensor], states: list[torch.Tensor], targets: torch.Tensor,
                 pad_id: int, which: str = "layerwise", weighting: str = "token", label_smoothing: float = 0.0,
                 ) -> torch.Tensor:
    """Cross-entropy of each decoder layer's output through `head`; [layers] ("final": the last layer only).

    `head` maps a state [batch, time, d] to per-token scores [batch, time, vocab], logits or log-probs alike:
    cross-entropy renormalises, and log-probs are already normalised, so both give the same loss.
    "token" averages over every target token of the batch (captions, ~10 tokens, outweigh a 1-token label);
    "sample" averages within each sample first, so each task weighs its share of the batch. `label_smoothing`
    as fairseq's label-smoothed cross-entropy, which OFA and the authors' MuE loss train with (0.1)."""
    chosen = states if which == "layerwise" else states[-1:]
    real = (targets != pad_id).float()
    losses = []
    for h in chosen:
        ce = F.cross_entropy(head(h).transpose(1, 2), targets, ignore_index=pad_id, reduction="none",
                             label_smoothing=label_smoothing)
        if weighting == "sample":
            losses.append(((ce * real).sum(1) / real.sum(1).clamp(min=1)).mean())
        else:
            losses.append((ce * real).sum() / real.sum())
    return torch.stack(losses)


def optimise(model: torch.nn.Module, *, steps: int, lr: float, weight_decay: float,
             schedule: Callable[[int], float], batch_losses: Callable[[], torch.Tensor], grad_accum: int = 1,
             scaler: torch.amp.GradScaler | None = None, log: Callable[[str], None] = print,
             log_every: int = 100) -> dict:
    """Train `model` for `steps` optimiser steps of AdamW with `schedule` (a factor on lr per step), each over
    `grad_accum` batches; `batch_losses` draws one batch and returns its per-layer losses. Gradients are clipped
    to norm 1. Returns the summary: steps, wall time, and the per-layer losses of the first and last steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history: list[list[float]] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        per_layer = None
        for _ in range(grad_accum):
            losses = batch_losses()
            loss = losses.sum() if grad_accum == 1 else losses.sum() / grad_accum
            (loss if scaler is None else scaler.scale(loss)).backward()
            per_layer = losses.detach() if per_layer is None else per_layer + losses.detach()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        sched.step()
        assert per_layer is not None
        history.append((per_layer / grad_accum).tolist())
        if step % log_every == 0 or step == steps - 1:
            layers = " ".join(f"{v:.3f}" for v in history[-1])
            log(f"step {step:5d}  loss {sum(history[-1]):.4f}  per decoder layer [{layers}]  "
                f"{time.perf_counter() - start:.0f}s")
    model.eval()
    return {"steps": steps, "wall_time_s": round(time.perf_counter() - start, 1),
            "loss_per_layer_first": history[0], "loss_per_layer_last": history[-1],
            "final_layer_loss_first": history[0][-1],
            "final_layer_loss_last": float(np.mean([h[-1] for h in history[-50:]]))}
