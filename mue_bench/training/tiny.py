"""Training the built-in model with MuE's layer-wise task loss.

Why layer-wise: early exit hands an intermediate decoder state to the LM head, so every layer must be
a usable output. The authors' `MuE_Task_Loss` applies the head (after the final norm) to each decoder
layer's output and sums the cross-entropies; `loss="final"` trains the usual way, as a control.
Captioning and entailment are trained together, entailment as a generated label word (as in OFA).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mue_bench.data import shapes
from mue_bench.data.loaders import Sample, load_karpathy, load_snli_ve
from mue_bench.errors import SpecError
from mue_bench.models.tiny.inputs import collate, load_pixels, pad, prompt, target_text
from mue_bench.models.tiny.model import TinyConfig, TinyOFA
from mue_bench.models.tiny.tokenizer import WordTokenizer


class TrainConfig(BaseModel):
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
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    enc_layers: int = 6
    dec_layers: int = 6
    encoder_attention: Literal["split", "joint"] = "split"
    stem_channels: int = Field(0, ge=0)  # see TinyConfig.stem_channels
    image_positions: Literal["learned", "sincos"] = "learned"  # see TinyConfig.image_positions
    threads: int = 2
    entailment_fraction: float = 0.5
    # "token": cross-entropy averaged over all target tokens (captions dominate: ~10 tokens vs 1 label);
    # "sample": averaged within each sample first, so both tasks weigh what their share of the batch says.
    loss_weighting: Literal["token", "sample"] = "token"
    # A training config to run first; this one then continues from its weights (a second stage).
    continue_from: str | None = None
    # Std of the text/decoder position and modality embeddings at init. None keeps PyTorch's N(0, 1), which
    # the v1 checkpoint was trained with: rows ~10x the norm of the token embeddings (std 0.02), so the
    # encoder saw mostly where a word was, not which. 0.02 (as GPT-2 and OFA; the shipped recipe) trains
    # faster and grounds entailment better (benchmarks/RESULTS.md, stops 12 and 13).
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
        if not path.is_file():
            raise SpecError(f"training config not found: {path}")
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as e:
            raise SpecError(f"{path}: {str(e).splitlines()[0]} ({_first_error(e)})") from None


def stages(config: Path) -> list[Path]:
    """The training configs a run of `config` trains, first stage first: every earlier one it reaches through
    `continue_from`, then itself. A missing stage or a cycle (which would recurse forever) is a SpecError."""
    chain = [Path(config)]
    cfg = TrainConfig.from_file(chain[0])
    while cfg.continue_from is not None:
        earlier = Path(cfg.continue_from)
        if earlier.resolve() in {p.resolve() for p in chain}:
            raise SpecError(f"{chain[-1]}: continue_from {earlier} leads back to itself (a cycle of stages)")
        chain.append(earlier)
        cfg = TrainConfig.from_file(earlier)
    return chain[::-1]


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        err = errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(e)


def layer_losses(model: TinyOFA, states: list[torch.Tensor], targets: torch.Tensor, pad_id: int,
                 which: str, weighting: str = "token") -> torch.Tensor:
    """Cross-entropy of each decoder layer's output through final norm + head; [layers]."""
    chosen = states if which == "layerwise" else states[-1:]
    real = (targets != pad_id).float()
    losses = []
    for h in chosen:
        ce = F.cross_entropy(model.logits(h).transpose(1, 2), targets, ignore_index=pad_id, reduction="none")
        if weighting == "sample":
            losses.append(((ce * real).sum(1) / real.sum(1).clamp(min=1)).mean())
        else:
            losses.append((ce * real).sum() / real.sum())
    return torch.stack(losses)


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


def _first_stage(cfg: TrainConfig, init: Path | None, log: Callable[[str], None]) -> tuple[TinyOFA, WordTokenizer]:
    """The model a second stage starts from: trained here from `continue_from`, or loaded from `init`
    (a checkpoint that config produced, to skip recomputing it)."""
    assert cfg.continue_from is not None
    if init is not None:
        return TinyOFA.load(init).train(), WordTokenizer.load(init / "tokenizer.json")
    stages(Path(cfg.continue_from))  # every earlier stage is there and none leads back, before any training
    first = train(TrainConfig.from_file(Path(cfg.continue_from)), None, log)
    return first["model"].train(), first["tokenizer"]


def train(cfg: TrainConfig, out: Path | None, log: Callable[[str], None] = print, init: Path | None = None) -> dict:
    torch.set_num_threads(cfg.threads)
    root = shapes.ensure(Path(cfg.data_root), cfg.data_seed, version=cfg.data_version)
    samples = training_samples(root, "train")
    captions = [s for s in samples if s.task == "caption"]
    entail = [s for s in samples if s.task == "entailment"]
    if cfg.continue_from is not None:
        model, tok = _first_stage(cfg, init, log)
        model_cfg = model.cfg
    else:
        texts = [prompt(s) for s in samples] + [r for s in captions for r in s.references] + ["yes no maybe"]
        tok = WordTokenizer.build(texts)
        model_cfg = TinyConfig(vocab_size=len(tok), d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                               enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
                               encoder_attention=cfg.encoder_attention, stem_channels=cfg.stem_channels,
                               image_positions=cfg.image_positions)
        torch.manual_seed(cfg.seed)
        model = TinyOFA(model_cfg)
        with torch.no_grad():
            if cfg.embedding_std is not None:
                for table in (model.text_pos, model.dec_pos, model.modality):
                    table.weight.normal_(0.0, cfg.embedding_std)
            if cfg.image_pos_std is not None:
                model.image_pos.normal_(0.0, cfg.image_pos_std)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    exit_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: batches stay those of the plain recipe
    pixels = {p: load_pixels(p, model_cfg.image_size) for p in {s.image for s in samples}}

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup) * 0.5 * (
        1 + np.cos(np.pi * min(step, cfg.steps) / cfg.steps)))
    history = []
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
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
        losses = layer_losses(model, states, dec_out, tok.pad_id, cfg.loss, cfg.loss_weighting)
        loss = losses.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(float(losses[-1].detach()))
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {float(loss.detach()):.4f}  final-layer {history[-1]:.4f}  "
                f"{time.perf_counter() - start:.0f}s")
    wall = time.perf_counter() - start
    model.eval()
    summary = {"steps": cfg.steps, "wall_time_s": round(wall, 1),
               "final_layer_loss_first": history[0], "final_layer_loss_last": float(np.mean(history[-50:]))}
    if out is not None:
        model.save(out, {"name": "mue-tiny", "train_loss": cfg.loss})
        tok.save(out / "tokenizer.json")
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return {"model": model, "tokenizer": tok, **summary}
