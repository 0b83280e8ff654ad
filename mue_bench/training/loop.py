"""What every family's training shares: the layer-wise loss, the target a sample trains toward, the
config loader, and the optimisation loop.

Why one of each: early exit hands an intermediate decoder state to the LM head, so every layer must be a
usable output. The authors' `MuE_Task_Loss` applies the head (after the final norm) to each decoder layer's
output and sums the cross-entropies; `loss="final"` trains the usual way, as a control. Written once, the
built-in model and a fine-tuned transformers model are trained by the same definition, and a change to it
reaches both. A family supplies only what differs: how it draws a batch and runs its decoder, its learning
rate schedule, and how it saves.

With a closed answer set (OFA's SNLI-VE), the authors' loss sees only the answer trie at the answer and </s>
positions: their dataset builds a `constraint_mask` from the trie (data/mm_data/snli_ve_dataset.py:186-193) and
their criterion fills every other logit with -inf before the log-softmax and smooths over the allowed tokens only
(criterions/label_smoothed_cross_entropy.py:91-101, 223-225), for each decoder layer (MuE_Task_Loss, 381-408).
`layer_losses(..., answers=...)` is that loss; the trie is the one a ranking pass scores with (mue.rank).
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
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.mue.search import allowed_mask, allowed_next
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
                 answers: tuple[tuple[int, ...], ...] = ()) -> torch.Tensor:
    """Cross-entropy of each decoder layer's output through `head`; [layers] ("final": the last layer only).

    `head` maps a state [batch, time, d] to per-token scores [batch, time, vocab], logits or log-probs alike:
    cross-entropy renormalises, and log-probs are already normalised, so both give the same loss.
    "token" averages over every target token of the batch (captions, ~10 tokens, outweigh a 1-token label);
    "sample" averages within each sample first, so each task weighs its share of the batch. `label_smoothing`
    as fairseq's label-smoothed cross-entropy (`smoothed_nll`), which OFA and the authors' MuE loss train with.

    With `answers` (token ids, each ending with EOS), every target token must lie on their trie, and the loss is
    the authors' under its constraint mask (`trie_losses`); `head` then sees the scored states only, [P, d]."""
    chosen = states if which == "layerwise" else states[-1:]
    if answers:
        scored = targets != pad_id
        allowed = trie_allowed(targets, answers, pad_id)
        return torch.stack([_reduce(trie_losses(head(h[scored]), targets[scored], allowed, label_smoothing),
                                    scored, weighting) for h in chosen])
    real = (targets != pad_id).float()
    losses = []
    for h in chosen:
        if label_smoothing:
            ce = smoothed_nll(head(h), targets, label_smoothing)
        else:
            ce = F.cross_entropy(head(h).transpose(1, 2), targets, ignore_index=pad_id, reduction="none")
        if weighting == "sample":
            losses.append(((ce * real).sum(1) / real.sum(1).clamp(min=1)).mean())
        else:
            losses.append((ce * real).sum() / real.sum())
    return torch.stack(losses)


def smoothed_nll(scores: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-position label-smoothed losses of scores [..., vocab] against targets [...], as fairseq's and the
    authors' `label_smoothed_nll_loss` (criterions/label_smoothed_cross_entropy.py:88-101, no constraint): the
    smoothing mass eps_i = eps / (vocab - 1) on every token, (1 - eps - eps_i) on the target's nll. (torch's
    `label_smoothing` spreads eps / vocab instead.) Padding positions are the caller's to mask."""
    lprobs = F.log_softmax(scores.float(), -1)
    nll = -lprobs.gather(-1, targets[..., None]).squeeze(-1)
    eps_i = eps / (scores.shape[-1] - 1)
    return (1.0 - eps - eps_i) * nll + eps_i * -lprobs.sum(-1)


def trie_allowed(targets: torch.Tensor, answers: tuple[tuple[int, ...], ...], pad_id: int) -> list[list[int]]:
    """For each scored target position (row-major, as `targets[targets != pad_id]`), the tokens the answer trie
    allows after the row's earlier targets: the dataset's `constraint_mask` rows (snli_ve_dataset.py:186-193,
    prefix = the target tokens from the answer's first position on). A target off the trie is refused: its
    log-prob under the mask is -inf."""
    allowed: list[list[int]] = []
    for row in targets.tolist():
        prefix: tuple[int, ...] = ()
        for token in (t for t in row if t != pad_id):
            ids = allowed_next(answers, prefix)
            if token not in ids:
                raise MueBenchError(f"a training target {[t for t in row if t != pad_id]} is not one of the answers' "
                                    f"token sequences {[list(a) for a in answers]}; train on those answers only, "
                                    "or remove answers")
            allowed.append(ids)
            prefix = (*prefix, token)
    return allowed


def trie_losses(scores: torch.Tensor, targets: torch.Tensor, allowed: list[list[int]],
                label_smoothing: float = 0.0) -> torch.Tensor:
    """[P] losses of scores [P, vocab] (logits or log-probs) against targets [P] with only `allowed[p]` possible
    at position p, as the authors' criterion computes it: the other logits filled with -inf before the
    log-softmax (label_smoothed_cross_entropy.py:223-229), so the cross-entropy is over the allowed tokens only,
    and the smoothing mass spread over the allowed tokens other than the target, eps_i = eps / (allowed - 1 +
    1e-6) (label_smoothed_nll_loss, lines 90-101). A position with one allowed token (</s> after an answer) is
    forced: its log-prob is 0, and so is its loss, with or without smoothing."""
    keep = allowed_mask(allowed, scores)
    lprobs = F.log_softmax(scores.float().masked_fill(~keep, float("-inf")), -1)
    nll = -lprobs.gather(1, targets[:, None]).squeeze(1)
    if label_smoothing == 0.0:
        return nll  # (1 - 0 - 0) * nll + 0 * smooth, without the arithmetic
    smooth = -lprobs.masked_fill(~keep, 0.0).sum(-1)
    eps_i = label_smoothing / (keep.sum(-1) - 1 + 1e-6)
    return (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth


def _reduce(losses: torch.Tensor, scored: torch.Tensor, weighting: str) -> torch.Tensor:
    """The per-position losses [P] of the scored positions (`scored` [B, T]) averaged as `layer_losses` does."""
    if weighting != "sample":
        return losses.mean()
    rows = scored.nonzero()[:, 0]
    per_row = torch.zeros(scored.shape[0], device=losses.device).index_add_(0, rows, losses)
    return (per_row / scored.sum(1).clamp(min=1)).mean()


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
