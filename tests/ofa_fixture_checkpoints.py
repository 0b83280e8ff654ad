"""Rebuild the tiny OFA fixture checkpoints in both released layouts.

Pure torch + stdlib (no project imports, no ModelScope): the reference
recorder (tools/ofa_reference/record_golden.py) writes its layout files with
these functions, and a test can call them again to get the same state dicts
and, with the same torch version and file names, the same bytes (the sha256
of each file is in tests/fixtures/ofa/<config>/goldens.json).

Two layouts:

* HF-port / ModelScope: ``config.json`` + ``pytorch_model.bin``.  The bin is
  ``torch.save`` of the ``OFAModel.state_dict()`` with **no key prefix**
  (``encoder.embed_tokens.weight``, ...).  The three tied tensors
  ``encoder.embed_tokens.weight``, ``decoder.embed_tokens.weight`` and
  ``decoder.output_projection.weight`` are all present and share one storage.
  (Hub checkpoints saved from a wrapper may carry a ``model.`` prefix;
  transformers' ``from_pretrained`` strips it, so a loader should accept both.)
* fairseq ``.pt`` as OFA releases it: a dict with ``args`` / ``cfg``,
  ``model`` (fairseq key names, see ``KEY_RENAMES``), ``criterion``,
  ``optimizer_history``, ``task_state``, ``extra_state`` and
  ``last_optimizer_state``.

Byte stability: ``torch.save`` output was byte-identical across processes in
the reference run (torch 2.13.0), but it depends on the torch version (pickle
and zip format), on the file's base name (it becomes the archive's root
folder), on key order and on which tensors share storage.  Compare state
dicts, not bytes, when the torch version differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

try:  # imported as tests.ofa_fixture_checkpoints or from the tests folder
    from .ofa_fixture_weights import fixture_state_dict
except ImportError:  # pragma: no cover - script use
    from ofa_fixture_weights import fixture_state_dict

# ModelScope name fragment -> fairseq (OFA / MuE unify_transformer*.py) name
# fragment.  Everything else is spelled the same in both.  Order matters when
# mapping fairseq -> ModelScope ("attn_ln" is a suffix of the other two).
KEY_RENAMES: list[tuple[str, str]] = [
    # decoder layers
    (".self_attn_mid_layer_norm.", ".self_attn_ln."),  # decoder (see below)
    (".cross_attn_mid_layer_norm.", ".cross_attn_ln."),
    (".cross_attn_layer_norm.", ".encoder_attn_layer_norm."),
    (".cross_attn.", ".encoder_attn."),
    # encoder and decoder layers
    (".ffn_layer_norm.", ".ffn_layernorm."),
]
# The encoder's NormFormer attention LN is "attn_ln" in fairseq but
# "self_attn_mid_layer_norm" in ModelScope, like the decoder's "self_attn_ln".
ENCODER_RENAMES: list[tuple[str, str]] = [
    (".self_attn_mid_layer_norm.", ".attn_ln."),
    (".ffn_layer_norm.", ".ffn_layernorm."),
]

# fairseq-only state-dict entries (no ModelScope counterpart)
FAIRSEQ_ONLY = {
    "encoder.version": "buffer torch.Tensor([3]) (float32), fairseq's state-dict upgrade marker",
    "decoder.version": "buffer torch.Tensor([3]) (float32), fairseq's state-dict upgrade marker",
    "{encoder,decoder}.layers.N.w_resid": "NormFormer scale_resids parameter (embed_dim,); ModelScope has none",
}


def modelscope_to_fairseq_key(key: str) -> str:
    """The fairseq name of ModelScope state-dict key ``key``."""
    renames = ENCODER_RENAMES if key.startswith("encoder.") else KEY_RENAMES
    for ms, fs in renames:
        if ms in key:
            return key.replace(ms, fs)
    return key


def fairseq_to_modelscope_key(key: str) -> str:
    """The ModelScope name of fairseq state-dict key ``key``."""
    renames = ENCODER_RENAMES if key.startswith("encoder.") else KEY_RENAMES
    for ms, fs in renames:
        if fs in key:
            return key.replace(fs, ms)
    return key


# --- buffers computed from the config (both implementations build them) ---

def token_bucket_positions(bucket_size: int, max_position: int = 1024) -> torch.Tensor:
    """Relative text position buckets, (max_position, max_position) int64."""
    pos = torch.arange(max_position, dtype=torch.long)
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    absd = torch.where((rel < mid) & (rel > -mid), torch.full_like(rel, mid - 1), rel.abs())
    logb = torch.ceil(
        torch.log(absd / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ) + mid
    bucket = torch.where(absd.le(mid), rel, logb.int() * torch.sign(rel)).long()
    return bucket + bucket_size - 1


def image_bucket_positions(bucket_size: int) -> torch.Tensor:
    """Relative 2-D image position buckets, (B*B+1, B*B+1) int64; row/col 0 is
    the slot for a global token."""
    num_rel = (2 * bucket_size - 1) ** 2 + 3
    ys, xs = torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    flat = torch.stack([ys.reshape(-1), xs.reshape(-1)])  # 2, B*B
    d = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)  # B*B, B*B, 2
    idx = (d[..., 0] + bucket_size - 1) * (2 * bucket_size - 1) + (d[..., 1] + bucket_size - 1)
    out = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=torch.long)
    out[1:, 1:] = idx
    out[0, 0:] = num_rel - 3
    out[0:, 0] = num_rel - 2
    out[0, 0] = num_rel - 1
    return out


def decoder_image_position_idx(code_image_size: int, image_bucket_size: int, tail: int) -> torch.Tensor:
    """The decoder's image-code position ids: 0, the window's ids, then ``tail``
    copies of 1024.  ModelScope uses tail=768, fairseq OFA tail=769."""
    w = code_image_size // 8
    ids = torch.arange(w).unsqueeze(0).expand(w, w) + torch.arange(w).unsqueeze(1) * image_bucket_size + 1
    return torch.cat([torch.tensor([0]), ids.reshape(-1), torch.tensor([1024] * tail)])


def computed_buffers(config: Mapping[str, Any], tail: int) -> dict[str, torch.Tensor]:
    tb = token_bucket_positions(int(config["token_bucket_size"]))
    ib = image_bucket_positions(int(config["image_bucket_size"]))
    return {
        "encoder.image_rp_bucket": ib,
        "encoder.token_rp_bucket": tb,
        "decoder.image_position_idx": decoder_image_position_idx(
            int(config["code_image_size"]), int(config["image_bucket_size"]), tail
        ),
        "decoder.image_rp_bucket": ib.clone(),
        "decoder.token_rp_bucket": tb.clone(),
    }


# --- state dicts ---

def modelscope_state_dict(shapes_doc: Mapping[str, Any], config: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """The ModelScope ``OFAModel.state_dict()`` of a fixture, in ModelScope's
    key order: fixture tensors, ``ones`` entries, tied aliases sharing their
    canonical tensor, and the config-computed index buffers."""
    seed = int(shapes_doc["seed"])
    filled = fixture_state_dict(shapes_doc["tensors"], seed)
    for k, shape in shapes_doc.get("ones", {}).items():
        filled[k] = torch.ones(tuple(shape))
    buffers = computed_buffers(config, tail=768)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k in shapes_doc["order"]:
        if k in filled:
            out[k] = filled[k]
        elif k in shapes_doc.get("tied", {}):
            out[k] = filled[shapes_doc["tied"][k]]
        elif k in buffers:
            out[k] = buffers[k]
        else:
            raise KeyError(f"no rule for state-dict key {k!r}")
    return out


def fairseq_state_dict(shapes_doc: Mapping[str, Any], config: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """The same weights under fairseq OFA names, as ``OFAModel.state_dict()``
    of the authors' code orders them closely enough (order is irrelevant to
    loading): ``encoder.version`` / ``decoder.version`` added, ModelScope's
    always-present ``c_attn`` dropped when the config has no scale_heads
    (fairseq then has no such parameter), and the decoder's
    ``image_position_idx`` one entry longer (fairseq appends 769 x 1024)."""
    ms = modelscope_state_dict(shapes_doc, config)
    scale_heads = bool(shapes_doc.get("fairseq_scale_heads", config.get("normformer", True)))
    fs_buffers = computed_buffers(config, tail=769)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    enc_done = False
    for k, v in ms.items():
        if k.startswith("decoder.") and not enc_done:
            out["encoder.version"] = torch.Tensor([3])
            enc_done = True
        if k.endswith(".c_attn") and not scale_heads:
            continue
        if k == "decoder.image_position_idx":
            v = fs_buffers[k]
        out[modelscope_to_fairseq_key(k)] = v
    out["decoder.version"] = torch.Tensor([3])
    return out


# --- writers ---

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_hf_layout(folder: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``folder/config.json`` (sorted keys, indent 2) + ``folder/pytorch_model.bin``;
    returns {file name: sha256}."""
    os.makedirs(folder, exist_ok=True)
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    torch.save(OrderedDict(state_dict), bin_path)
    return {"config.json": sha256_file(cfg_path), "pytorch_model.bin": sha256_file(bin_path)}


def fairseq_model_args(config: Mapping[str, Any], arch: str, patch_image_size: int) -> dict[str, Any]:
    """The architecture part of a released OFA checkpoint's args / cfg.model,
    filled from a ModelScope OFAConfig dict (the names are fairseq's)."""
    normformer = bool(config["normformer"])
    return {
        "_name": "ofa",
        "arch": arch,
        "encoder_embed_dim": config["d_model"],
        "encoder_ffn_embed_dim": config["encoder_ffn_dim"],
        "encoder_layers": config["encoder_layers"],
        "encoder_attention_heads": config["encoder_attention_heads"],
        "encoder_normalize_before": config["encoder_normalize_before"],
        "encoder_learned_pos": True,
        "decoder_embed_dim": config["d_model"],
        "decoder_ffn_embed_dim": config["decoder_ffn_dim"],
        "decoder_layers": config["decoder_layers"],
        "decoder_attention_heads": config["decoder_attention_heads"],
        "decoder_normalize_before": config["decoder_normalize_before"],
        "decoder_learned_pos": True,
        "decoder_output_dim": config["d_model"],
        "decoder_input_dim": config["d_model"],
        "max_source_positions": config["max_position_embeddings"],
        "max_target_positions": config["max_position_embeddings"],
        "share_decoder_input_output_embed": config["share_decoder_input_output_embed"],
        "share_all_embeddings": True,
        "no_scale_embedding": not config["scale_embedding"],
        "layernorm_embedding": config["layernorm_embedding"],
        "patch_layernorm_embedding": config["patch_layernorm_embedding"],
        "code_layernorm_embedding": config["code_layernorm_embedding"],
        "add_type_embedding": config["add_type_embedding"],
        "activation_fn": config["activation_function"],
        "dropout": config["dropout"],
        "attention_dropout": config["attention_dropout"],
        "activation_dropout": config["activation_dropout"],
        "relu_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "adaptive_softmax_cutoff": None,
        "adaptive_softmax_dropout": 0,
        "adaptive_input": False,
        "tie_adaptive_weights": False,
        "quant_noise_pq": 0,
        "quant_noise_pq_block_size": 8,
        "resnet_type": config["resnet_type"],
        "resnet_drop_path_rate": config["resnet_drop_path_rate"],
        "encoder_drop_path_rate": config["encoder_drop_path_rate"],
        "decoder_drop_path_rate": config["decoder_drop_path_rate"],
        "token_bucket_size": config["token_bucket_size"],
        "image_bucket_size": config["image_bucket_size"],
        "attn_scale_factor": config["attn_scale_factor"],
        "code_image_size": config["code_image_size"],
        "patch_image_size": patch_image_size,
        "orig_patch_image_size": config["orig_patch_image_size"],
        "entangle_position_embedding": config["entangle_position_embedding"],
        "disable_entangle": config["disable_entangle"],
        "scale_attn": normformer,
        "scale_fc": normformer,
        "scale_heads": normformer,
        "scale_resids": False,
        "sync_bn": False,
        "freeze_resnet": False,
        "freeze_encoder_embedding": False,
        "freeze_decoder_embedding": False,
        "pooler_activation_fn": "tanh",
        "pooler_dropout": 0.0,
        "pooler_classifier": "mlp",
        "bpe": "gpt2",
    }


def fairseq_checkpoint(model_args: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                       style: str = "cfg") -> dict[str, Any]:
    """The dict a fairseq trainer saves.  ``style="cfg"`` (hydra-era fairseq,
    as OFA's trainer writes it): ``args`` is None and ``cfg`` is a plain dict
    whose ``model`` (and ``task``) entries are argparse Namespaces (fairseq
    allows Namespace objects inside the dict config for legacy models).
    ``style="args"`` (pre-hydra): one flat ``args`` Namespace, no ``cfg``.
    Loading either needs ``torch.load(..., weights_only=False)`` or
    ``argparse.Namespace`` allow-listed for the weights-only unpickler."""
    model_ns = argparse.Namespace(**dict(model_args))
    task_ns = argparse.Namespace(_name="caption", data="", selected_cols="0,4,2",
                                 patch_image_size=model_args["patch_image_size"],
                                 max_src_length=80, max_tgt_length=20)
    n_params = len(state_dict)
    common = {
        "optimizer_history": [
            {
                "criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 0.0,
            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
        },
        "last_optimizer_state": {
            "state": {},
            "param_groups": [{"lr": [1e-05], "betas": (0.9, 0.999), "eps": 1e-08,
                              "weight_decay": 0.01, "params": list(range(n_params))}],
        },
    }
    if style == "cfg":
        cfg = {
            "_name": None,
            "common": {"_name": None, "seed": 7, "fp16": False, "log_format": "simple"},
            "model": model_ns,
            "task": task_ns,
            "criterion": {"_name": "adjust_label_smoothed_cross_entropy", "label_smoothing": 0.1},
            "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.999)", "adam_eps": 1e-08},
            "lr_scheduler": {"_name": "polynomial_decay", "warmup_ratio": 0.06},
            "generation": {"_name": None, "beam": 5, "max_len_a": 0, "max_len_b": 16,
                           "min_len": 1, "no_repeat_ngram_size": 3, "lenpen": 1, "unkpen": 0},
        }
        ckpt = {"args": None, "cfg": cfg, "model": OrderedDict(state_dict), "criterion": None}
    elif style == "args":
        flat = dict(vars(task_ns))
        flat.update(dict(model_args))
        flat["task"] = "caption"
        ckpt = {"args": argparse.Namespace(**flat), "model": OrderedDict(state_dict)}
    else:
        raise ValueError(f"unknown checkpoint style {style!r}")
    ckpt.update(common)
    return ckpt


def write_fairseq_layout(path: str, model_args: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                         style: str = "cfg") -> str:
    """torch.save a fairseq-style OFA checkpoint to ``path``; returns its sha256."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(fairseq_checkpoint(model_args, state_dict, style=style), path)
    return sha256_file(path)


def load_shapes_doc(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shapes.json, config.json) of a fixture folder."""
    with open(os.path.join(folder, "shapes.json")) as f:
        shapes = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    return shapes, config
