"""OFA's two public checkpoint layouts, read into one form: a ModelScope-style config dict (OFAConfig field
names) and a state dict with ModelScope's modeling_ofa parameter names.

(a) fairseq `.pt`, as OFA releases them (`ofa_base.pt`, `caption_base_best.pt`, `snli_ve_base_best.pt`): a
    pickle holding `model` (the weights), `args` (argparse Namespace) or `cfg` (omegaconf turned into dicts,
    with `cfg["model"]` sometimes still a Namespace), optimizer and trainer state, and with EMA training
    `extra_state["ema"]`. Read with safe_pickle, so nothing in it runs; only weights are kept.
(b) the HF port / ModelScope layout: a folder with config.json, pytorch_model.bin (or model.safetensors)
    and the tokenizer's vocab.json + merges.txt.

`convert_checkpoint` writes either as a safetensors folder once, so runs load it without pickles.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mue_bench.errors import SpecError
from mue_bench.models import safe_pickle
from mue_bench.models.ofa import tokenizer as ofa_tok

# --- config -------------------------------------------------------------------------------------------

# Per-architecture defaults, as the authors' models/ofa/ofa.py:391-435 sets them (d_model, ffn, encoder
# layers, encoder heads, decoder layers, decoder heads, ResNet); every arch then takes ofa_large's rest.
ARCHS: dict[str, tuple[int, int, int, int, int, int, str]] = {
    "ofa_tiny": (256, 4 * 256, 4, 4, 4, 4, "resnet50"),
    "ofa_medium": (512, 4 * 512, 4, 8, 4, 8, "resnet101"),
    "ofa_base": (768, 4 * 768, 6, 12, 6, 12, "resnet101"),
    "ofa_large": (1024, 4 * 1024, 12, 16, 12, 16, "resnet152"),
    "ofa_huge": (1280, 4 * 1280, 24, 16, 12, 16, "resnet152"),
}
# ofa_large_architecture's other defaults (ofa.py:320-388), by fairseq argument name.
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "encoder_normalize_before": True, "decoder_normalize_before": True, "attention_dropout": 0.0,
    "relu_dropout": 0.0, "dropout": 0.0, "max_source_positions": 1024, "max_target_positions": 1024,
    "share_decoder_input_output_embed": True, "no_scale_embedding": True, "layernorm_embedding": True,
    "activation_fn": "gelu", "resnet_drop_path_rate": 0.0, "encoder_drop_path_rate": 0.0,
    "decoder_drop_path_rate": 0.0, "token_bucket_size": 256, "image_bucket_size": 42,
    "add_type_embedding": True, "attn_scale_factor": 2, "code_image_size": 128,
    "patch_layernorm_embedding": True, "code_layernorm_embedding": True, "entangle_position_embedding": False,
    "disable_entangle": False, "scale_attn": False, "scale_fc": False, "scale_heads": False,
    "scale_resids": False, "orig_patch_image_size": 256, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
}
# OFAConfig field <- fairseq argument, where the value carries over as it is.
SAME_FIELDS = ("encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
               "dropout", "attention_dropout", "encoder_normalize_before", "decoder_normalize_before",
               "encoder_drop_path_rate", "decoder_drop_path_rate", "resnet_drop_path_rate", "layernorm_embedding",
               "patch_layernorm_embedding", "code_layernorm_embedding", "resnet_type", "token_bucket_size",
               "image_bucket_size", "add_type_embedding", "share_decoder_input_output_embed", "attn_scale_factor",
               "code_image_size", "entangle_position_embedding", "disable_entangle", "orig_patch_image_size",
               "encoder_layerdrop", "decoder_layerdrop")
# The task settings inputs need, kept beside the config (ofa_task.json), from OFA's task configs.
TASK_FIELDS = ("patch_image_size", "max_src_length", "max_tgt_length", "add_caption", "prompt_type",
               "imagenet_default_mean_and_std", "ans2label_dict", "code_dict_size", "num_bins")

# The OFAConfig defaults complete_state reads, for a config.json that leaves them out (configuration_ofa.py).
OFACONFIG_DEFAULTS = {"encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 8,
                      "decoder_attention_heads": 8, "resnet_type": "resnet101",
                      "share_decoder_input_output_embed": True}

# ResNet stages' Bottleneck counts in ModelScope's OFAEncoder (modeling_ofa.py:925-941).
RESNET_BLOCKS = {"resnet18": (2, 2, 2), "resnet34": (3, 4, 6), "resnet50": (3, 4, 6),
                 "resnet101": (3, 4, 23), "resnet152": (3, 8, 36)}


def fairseq_config(args: dict[str, Any], vocab_size: int, source: Path) -> dict[str, Any]:
    """OFAConfig fields from fairseq training arguments, filling what is absent with the arch's defaults."""
    arch = args.get("arch") or args.get("_name")
    if arch in ARCHS:
        dims = dict(zip(("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
                         "decoder_layers", "decoder_attention_heads", "resnet_type"), ARCHS[arch]))
        args = {**FAIRSEQ_DEFAULTS, **dims, **{k: v for k, v in args.items() if v is not None}}
    else:
        args = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
        for name in ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "decoder_layers",
                     "encoder_attention_heads", "decoder_attention_heads", "resnet_type"):
            if name not in args:
                raise SpecError(f"{source}: unknown OFA arch {arch!r} and no {name} in its args "
                                f"(known: {', '.join(ARCHS)})")
    d = args["encoder_embed_dim"]
    for name in ("decoder_embed_dim", "decoder_output_dim", "decoder_input_dim"):
        if args.get(name, d) != d:
            raise SpecError(f"{source}: {name}={args[name]} differs from encoder_embed_dim={d}; ModelScope's "
                            "OFA has one d_model")
    if args["max_source_positions"] != args["max_target_positions"]:
        raise SpecError(f"{source}: max_source_positions={args['max_source_positions']} differs from "
                        f"max_target_positions={args['max_target_positions']}; ModelScope's OFA has one "
                        "max_position_embeddings")
    if bool(args["scale_attn"]) != bool(args["scale_fc"]):
        raise SpecError(f"{source}: scale_attn={args['scale_attn']} but scale_fc={args['scale_fc']}; "
                        "ModelScope's normformer switch covers both")
    if args["scale_resids"]:
        raise SpecError(f"{source}: scale_resids=True (w_resid weights) has no counterpart in ModelScope's OFA")
    config: dict[str, Any] = {k: args[k] for k in SAME_FIELDS}
    config.update(
        model_type="ofa", vocab_size=vocab_size, d_model=d, max_position_embeddings=args["max_source_positions"],
        encoder_ffn_dim=args["encoder_ffn_embed_dim"],
        decoder_ffn_dim=args.get("decoder_ffn_embed_dim", args["encoder_ffn_embed_dim"]),
        activation_function=args["activation_fn"],
        activation_dropout=args.get("activation_dropout") or args["relu_dropout"] or 0.0,
        scale_embedding=not args["no_scale_embedding"], normformer=bool(args["scale_attn"]),
        share_attn_bias=False, use_image_feature=True, use_ofasys=False,
        pad_token_id=ofa_tok.PAD, bos_token_id=ofa_tok.BOS, eos_token_id=ofa_tok.EOS,
        decoder_start_token_id=ofa_tok.BOS, forced_eos_token_id=ofa_tok.EOS,
    )
    return config


# --- state dict keys ----------------------------------------------------------------------------------

# Per-layer module renames, fairseq (unify_transformer_layer.py) -> ModelScope (modeling_ofa.py:431-610).
LAYER_RENAMES = {
    "encoder": {"attn_ln": "self_attn_mid_layer_norm", "ffn_layernorm": "ffn_layer_norm"},
    "decoder": {"self_attn_ln": "self_attn_mid_layer_norm", "cross_attn_ln": "cross_attn_mid_layer_norm",
                "encoder_attn": "cross_attn", "encoder_attn_layer_norm": "cross_attn_layer_norm",
                "ffn_layernorm": "ffn_layer_norm"},
}
# fairseq-only entries dropped without loss: version buffers and classification heads (ofa.py:140; unused
# by caption and SNLI-VE, which generate answers as text).
DROP = re.compile(r"(^|\.)version$|^classification_heads\.")
# Same name, other content: fairseq pads the decoder's image-code positions with 769 copies of 1024,
# ModelScope with 768 (unify_transformer.py:1362 vs modeling_ofa.py:1563); a function of the config, so left for
# the model to build.
REBUILT = ("decoder.image_position_idx",)
# fairseq-only weights that change the computation and have no ModelScope counterpart: refused.
REFUSE = re.compile(r"\.w_resid$|\.adapter\.|^(encoder|decoder)\.(encoder|decoder)_prompt_encoder\.|\.bias_[kv]$")
_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.([^.]+)(\..*)$")
EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def modelscope_key(key: str) -> str | None:
    """ModelScope's name for a fairseq state-dict key; None where it has no counterpart to keep."""
    if DROP.search(key):
        return None
    m = _LAYER_KEY.match(key)
    if m:
        side, index, module, rest = m.groups()
        return f"{side}.layers.{index}.{LAYER_RENAMES[side].get(module, module)}{rest}"
    return key


def map_fairseq_state(state: dict[str, Any], source: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(ModelScope-named weights, fairseq keys dropped)."""
    out, dropped = {}, []
    for key, value in state.items():
        if REFUSE.search(key):
            raise SpecError(f"{source}: weight {key} has no counterpart in ModelScope's OFA")
        new = modelscope_key(key)
        if new is None or new in REBUILT or not isinstance(value, torch.Tensor):
            dropped.append(key)
            continue
        out[new] = value
    return out, dropped


def resnet_keys(resnet_type: str) -> list[str]:
    """The ResNet weights ModelScope's encoder needs, in module order (`num_batches_tracked` aside)."""
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]

    keys = ["conv1.weight", *bn("bn1")]
    for stage, blocks in enumerate(RESNET_BLOCKS[resnet_type], 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight", *bn(f"{p}.bn{i}")]
            if b == 0:  # every stage's first block changes width, so it has a projection shortcut
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return [f"encoder.embed_images.{k}" for k in keys]


def complete_state(state: dict[str, torch.Tensor], config: dict[str, Any], source: Path) -> None:
    """Check what inputs need and fill what is exact to fill: the shared embeddings under each of their three
    names, `num_batches_tracked` counters (frozen-BN checkpoints lack them; eval never reads them), and unit
    head scales where training ran without scale_heads (ModelScope's attention always has `c_attn`)."""
    if not any(k in state for k in EMBEDDINGS) or not any(k.startswith("decoder.layers.") for k in state):
        raise SpecError(f"{source}: no OFA weights (no encoder.embed_tokens.weight or decoder.layers.*)")
    shared = next(state[k] for k in EMBEDDINGS if k in state)
    if config["share_decoder_input_output_embed"]:
        for k in EMBEDDINGS:
            state.setdefault(k, shared)
    rows = shared.shape[0]
    if config.get("vocab_size", rows) != rows:
        raise SpecError(f"{source}: vocab_size {config['vocab_size']} does not match the {rows} rows of "
                        f"{EMBEDDINGS[0]}")
    resnet = config["resnet_type"]
    if resnet not in RESNET_BLOCKS:
        raise SpecError(f"{source}: resnet_type {resnet!r} is not one of {', '.join(RESNET_BLOCKS)}")
    for key in resnet_keys(resnet):
        if key not in state:
            raise SpecError(f"{source}: no ResNet weight {key} ({resnet} needs it)")
        if key.endswith(".running_var"):
            state.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(0))
    for side in ("encoder", "decoder"):
        heads = config[f"{side}_attention_heads"]
        for i in range(config[f"{side}_layers"]):
            if f"{side}.layers.{i}.fc1.weight" not in state:
                raise SpecError(f"{source}: no weights for {side} layer {i} ({side}_layers is "
                                f"{config[f'{side}_layers']})")
            for attn in ("self_attn", "cross_attn") if side == "decoder" else ("self_attn",):
                state.setdefault(f"{side}.layers.{i}.{attn}.c_attn", torch.ones(heads))
        if f"{side}.layers.{config[f'{side}_layers']}.fc1.weight" in state:
            raise SpecError(f"{source}: more {side} layers in the weights than {side}_layers="
                            f"{config[f'{side}_layers']}")


# --- reading ------------------------------------------------------------------------------------------


@dataclass
class OFACheckpoint:
    config: dict[str, Any]  # ModelScope OFAConfig fields
    state: dict[str, torch.Tensor]  # ModelScope modeling_ofa names; shared tensors may appear under several
    source: Path
    layout: str  # "fairseq" | "hf"
    task: dict[str, Any] = field(default_factory=dict)  # the training task's input settings, where known
    tokenizer_dir: Path | None = None  # a folder with vocab.json + merges.txt
    dropped: list[str] = field(default_factory=list)  # source keys with no counterpart


def read_checkpoint(source: Path, ema: bool = False, tokenizer: Path | None = None) -> OFACheckpoint:
    """Either layout by what `source` is: a folder is the HF/ModelScope layout, a file a fairseq `.pt`.
    `tokenizer`: a folder of tokenizer files to use (and check against the embedding rows)."""
    source = Path(source)
    if source.is_dir():
        if ema:
            raise SpecError(f"{source}: --ema reads a fairseq .pt's extra_state; a folder has no EMA weights")
        ckpt = read_hf_folder(source)
    elif source.is_file():
        ckpt = read_fairseq(source, ema)
    else:
        raise SpecError(f"checkpoint not found: {source}")
    if tokenizer is not None:
        kind = ofa_tok.tokenizer_files(Path(tokenizer))
        if kind is None:
            raise SpecError(f"{tokenizer}: no tokenizer files (vocab.json + merges.txt, or OFA's utils/BPE "
                            "encoder.json + vocab.bpe + dict.txt)")
        ckpt.tokenizer_dir = Path(tokenizer)
    if ckpt.tokenizer_dir is not None and ofa_tok.tokenizer_files(ckpt.tokenizer_dir) == "hf":
        n = ofa_tok.vocab_size(ckpt.tokenizer_dir)
        if n != ckpt.config["vocab_size"]:
            raise SpecError(f"{ckpt.tokenizer_dir / 'vocab.json'}: the tokenizer has {n} ids with OFA's added "
                            f"tokens, the embeddings have {ckpt.config['vocab_size']} rows")
    return ckpt


def read_fairseq(path: Path, ema: bool = False) -> OFACheckpoint:
    raw = safe_pickle.load_checkpoint(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise SpecError(f"{path}: not an OFA checkpoint (no `model` state dict in it)")
    weights = raw["model"]
    if ema:
        extra = raw.get("extra_state") if isinstance(raw.get("extra_state"), dict) else {}
        if not isinstance(extra.get("ema"), dict):
            raise SpecError(f"{path}: no EMA weights (extra_state.ema); convert without --ema")
        weights = {**extra["ema"], **{k: v for k, v in (extra.get("ema_fp32_params") or {}).items()
                                      if isinstance(v, torch.Tensor)}}  # fp32 copies where training kept them
    args = _training_args(raw, path)
    state, dropped = map_fairseq_state(weights, path)
    if EMBEDDINGS[0] not in state:
        raise SpecError(f"{path}: `model` holds no OFA weights (no {EMBEDDINGS[0]})")
    config = fairseq_config(args, state[EMBEDDINGS[0]].shape[0], path)
    complete_state(state, config, path)
    task = {k: args[k] for k in TASK_FIELDS if k in args}
    task.update(task=_task_name(raw, args), arch=args.get("arch") or args.get("_name"), ema=ema)
    return OFACheckpoint(config, state, path, "fairseq", task, dropped=dropped)


def _training_args(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """One flat dict of the training arguments: `args`, or `cfg`'s task and model sections."""
    if raw.get("args") is not None:
        args = safe_pickle.plain(raw["args"])
    elif isinstance(raw.get("cfg"), (dict, safe_pickle.Inert)):
        cfg = safe_pickle.plain(raw["cfg"])
        args = {**(cfg.get("task") or {}), **(cfg.get("model") or {})} if isinstance(cfg, dict) else None
    else:
        args = None
    if not isinstance(args, dict):
        raise SpecError(f"{path}: not an OFA checkpoint (neither `args` nor `cfg` with the training settings)")
    return args


def _task_name(raw: dict[str, Any], args: dict[str, Any]) -> str | None:
    cfg = safe_pickle.plain(raw.get("cfg")) if raw.get("cfg") is not None else {}
    task = cfg.get("task") if isinstance(cfg, dict) else None
    name = task.get("_name") if isinstance(task, dict) else None
    return name or args.get("task")


def read_hf_folder(folder: Path) -> OFACheckpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SpecError(f"checkpoint file not found: {config_path}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise SpecError(f"{config_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(config, dict) or config.get("model_type", "ofa") != "ofa":
        raise SpecError(f"{config_path}: not an OFA config (model_type {config.get('model_type')!r})")
    state = _read_weights(folder)
    if sum(k.startswith("model.") for k in state) > len(state) // 2:  # saved from a wrapper holding `model`
        state = {k.removeprefix("model."): v for k, v in state.items()}
    dropped = [k for k in state if DROP.search(k)]
    state = {k: v for k, v in state.items() if k not in dropped}
    config = {**OFACONFIG_DEFAULTS, **config}
    complete_state(state, config, config_path)
    tok = folder if ofa_tok.tokenizer_files(folder) == "hf" else None
    return OFACheckpoint(config, state, folder, "hf", {}, tok, dropped)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st, binary = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # safetensors' own error types: a torn or foreign file
            raise SpecError(f"{st}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if not binary.is_file():
        raise SpecError(f"checkpoint file not found: {binary} (nor model.safetensors)")
    state = safe_pickle.load_checkpoint(binary)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(f"{binary}: not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# --- writing ------------------------------------------------------------------------------------------

TASK_FILE = "ofa_task.json"
TIED_KEY = "tied"  # safetensors metadata: JSON {name left out: name it shares storage with}


def dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One copy of each shared tensor (safetensors refuses aliases; OFA ties its input and output
    embeddings): (tensors to save, {left-out name: kept name}). A partial overlap is saved as a copy."""
    kept: dict[tuple, str] = {}
    out, tied = {}, {}
    storages: dict[int, list[str]] = {}
    for name in sorted(state):
        t = state[name]
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in kept:
            tied[name] = kept[view]
            continue
        kept[view] = name
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if t.numel() and ptr in storages else t.contiguous()
        storages.setdefault(ptr, []).append(name)
    return out, tied


def read_converted(folder: Path) -> dict[str, torch.Tensor]:
    """A converted folder's weights with the tied names restored (each the same tensor as its partner)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            tied = json.loads((f.metadata() or {}).get(TIED_KEY, "{}"))
    except Exception as e:  # safetensors' own error types
        raise SpecError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    for name, partner in tied.items():
        state[name] = state[partner]
    return state


def convert_checkpoint(src: Path, dst: Path, ema: bool = False, tokenizer: Path | None = None,
                       force: bool = False) -> Path:
    """Write `src` (either layout) as a safetensors folder `dst`: model.safetensors, config.json,
    ofa_task.json and the tokenizer's vocab.json + merges.txt. Built in a temporary folder beside `dst` and
    renamed into place, so a failure leaves nothing half-written; an existing non-empty `dst` needs `force`."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise SpecError(f"output {dst} is a file; give a folder")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise SpecError(f"output folder {dst} is not empty (use --force to replace it)")
    ckpt = read_checkpoint(src, ema=ema, tokenizer=tokenizer)
    if ckpt.tokenizer_dir is None:
        raise SpecError(f"{src}: no tokenizer files beside it; pass --tokenizer DIR (vocab.json + merges.txt, "
                        "or OFA's utils/BPE with encoder.json, vocab.bpe, dict.txt)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write(ckpt, tmp)
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old)
        else:
            tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dst


def _write(ckpt: OFACheckpoint, out: Path) -> None:
    from safetensors.torch import save_file

    tensors, tied = dedupe(ckpt.state)
    meta = {"format": "pt", TIED_KEY: json.dumps(tied, sort_keys=True)}
    save_file(tensors, str(out / "model.safetensors"), metadata=meta)
    (out / "config.json").write_text(json.dumps(ckpt.config, indent=2, sort_keys=True) + "\n")
    task = {**ckpt.task, "source": str(ckpt.source), "layout": ckpt.layout, "dropped_keys": ckpt.dropped}
    (out / TASK_FILE).write_text(json.dumps(task, indent=2, sort_keys=True, default=str) + "\n")
    assert ckpt.tokenizer_dir is not None
    if ofa_tok.tokenizer_files(ckpt.tokenizer_dir) == "fairseq":
        ofa_tok.fairseq_bpe_to_hf(ckpt.tokenizer_dir, out)
        n = ofa_tok.vocab_size(out)
        if n != ckpt.config["vocab_size"]:
            raise SpecError(f"{ckpt.tokenizer_dir}: the tokenizer has {n} ids with OFA's added tokens, the "
                            f"embeddings have {ckpt.config['vocab_size']} rows")
    else:
        for name in ofa_tok.HF_FILES:
            shutil.copyfile(ckpt.tokenizer_dir / name, out / name)
