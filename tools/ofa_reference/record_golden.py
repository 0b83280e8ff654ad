"""Record golden outputs of ModelScope's OFA for tiny fixture configs.

Run inside the throwaway reference venv (see setup_env.sh), never the
project's own:

    OMP_NUM_THREADS=1 /work/ofa-ref-venv/bin/python tools/ofa_reference/record_golden.py \
        [--out tests/fixtures/ofa] [--layouts-dir /tmp/ofa-layouts] [--only NAME]

For every config in CONFIGS it writes tests/fixtures/ofa/<name>/:
  config.json      ModelScope OFAConfig fields (OFAConfig.to_dict(), minus
                   transformers' bookkeeping keys)
  shapes.json      state-dict key order, fixture tensors {key: shape}, keys set
                   to ones, tied aliases, config-computed index buffers
  goldens.safetensors  inputs (uint8 images, token ids) and float32 outputs
  goldens.json     prompts, settings, generated ids/scores, layout sha256s
The checkpoint layout files themselves (tens of MB) go to --layouts-dir only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

import ofa_fixture_checkpoints as ckpts  # noqa: E402
from ofa_fixture_weights import FIXTURE_RULES_VERSION  # noqa: E402

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from modelscope.models.multi_modal.ofa import OFAConfig, OFAModel  # noqa: E402
from modelscope.models.multi_modal.ofa.generate import sequence_generator  # noqa: E402

BOS, PAD, EOS, UNK = 0, 1, 2, 3

# Shared by both configs; everything not listed keeps OFAConfig's default
# (recorded in full in config.json).
COMMON = dict(
    encoder_normalize_before=True,
    decoder_normalize_before=True,
    layernorm_embedding=True,
    patch_layernorm_embedding=True,
    code_layernorm_embedding=True,
    add_type_embedding=True,
    share_decoder_input_output_embed=True,
    scale_embedding=False,
    entangle_position_embedding=False,
    share_attn_bias=False,
    use_image_feature=True,
    use_ofasys=False,
    activation_function="gelu",
    attn_scale_factor=2.0,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    decoder_layerdrop=0.0,
    encoder_drop_path_rate=0.0,
    decoder_drop_path_rate=0.0,
    resnet_drop_path_rate=0.0,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
    decoder_start_token_id=BOS,
    forced_eos_token_id=EOS,
)

CONFIGS = OrderedDict(
    rn50_plain=dict(
        seed=5001,
        image_size=64,  # ResNet stride 16 -> 4 x 4 = 16 patches
        arch="ofa_tiny",
        ofa=dict(
            COMMON,
            vocab_size=256,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            resnet_type="resnet50",
            normformer=False,
            token_bucket_size=8,
            image_bucket_size=6,
            code_image_size=48,
            max_position_embeddings=64,
            orig_patch_image_size=64,
        ),
    ),
    rn101_normformer=dict(
        seed=5002,
        image_size=96,  # 6 x 6 = 36 patches
        arch="ofa_base",
        ofa=dict(
            COMMON,
            vocab_size=320,
            d_model=48,
            encoder_layers=3,
            decoder_layers=3,
            encoder_attention_heads=6,
            decoder_attention_heads=6,
            encoder_ffn_dim=96,
            decoder_ffn_dim=96,
            resnet_type="resnet101",
            normformer=True,
            token_bucket_size=16,
            image_bucket_size=8,
            code_image_size=64,
            max_position_embeddings=64,
            orig_patch_image_size=96,
        ),
    ),
)

# Token ids stand in for text.  Each prompt is <s> ... </s> like OFA's BPE
# encoding of " what does the image describe?" (caption) and of
# ' does the image describe " <hypothesis> "?' (SNLI-VE).
PROMPTS = OrderedDict(
    caption=[BOS, 14, 27, 33, 41, 58, 63, EOS],
    snli_ve=[BOS, 77, 12, 98, 45, 7, 150, 151, 152, 9, 33, 101, 19, 200, EOS],
)
# batch rows: (image index, prompt name, teacher-forcing target without BOS)
ROWS = [
    (0, "caption", [21, 44, 90, 17, 63, EOS]),
    (1, "snli_ve", [120, EOS]),
    (2, "caption", [5, 66, 130, 9, 9, 201, 47, 88, 19, EOS]),
]

GEN_COMMON = dict(max_len_a=0, min_len=1, normalize_scores=True, len_penalty=1.0,
                  unk_penalty=0.0, temperature=1.0, match_source_len=False)
GENERATION_RUNS = OrderedDict(
    greedy=dict(GEN_COMMON, beam_size=1, max_len_b=20, no_repeat_ngram_size=0),
    beam5=dict(GEN_COMMON, beam_size=5, max_len_b=20, no_repeat_ngram_size=0),
    caption_beam5=dict(GEN_COMMON, beam_size=5, max_len_b=16, no_repeat_ngram_size=3),
)

HF_BOOKKEEPING = {"transformers_version", "_name_or_path", "architectures", "_commit_hash",
                  "_attn_implementation_autoset", "torch_dtype"}


class ToyTokenizer:
    """What ModelScope's SequenceGenerator / BeamSearch read from a tokenizer."""

    def __init__(self, vocab_size: int):
        self._vocab = {f"<t{i}>": i for i in range(vocab_size)}
        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id = BOS, PAD, EOS, UNK

    def get_vocab(self):
        return dict(self._vocab)

    def get_added_vocab(self):
        return {}


def make_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Deterministic uint8 RGB images (n, 3, size, size): a smooth random
    low-resolution pattern, upsampled, plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g, dtype=torch.float64)
    smooth = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.rand((n, 3, size, size), generator=g, dtype=torch.float64)
    img = (0.8 * smooth + 0.2 * noise).clamp(0, 1)
    return torch.round(img * 255).to(torch.uint8)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """OFA's transform after resizing: ToTensor (/255) then Normalize(mean=std=0.5)."""
    return (images_u8.to(torch.float32) / 255.0 - 0.5) / 0.5


def right_pad(rows, pad=PAD) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def describe_state_dict(model: OFAModel, ofa_kwargs: dict, seed: int) -> dict:
    sd = model.state_dict()
    first_name = {}
    tied = {}
    for k, v in sd.items():
        ptr = (v.data_ptr(), tuple(v.shape), v.dtype)
        if v.dtype == torch.float32 and ptr in first_name:
            tied[k] = first_name[ptr]
        else:
            first_name.setdefault(ptr, k)
    tensors, ones, computed = OrderedDict(), OrderedDict(), OrderedDict()
    for k, v in sd.items():
        if k in tied:
            continue
        if v.dtype in (torch.int64, torch.int32) and not k.endswith("num_batches_tracked"):
            computed[k] = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        elif k.endswith(".c_attn") and not ofa_kwargs["normformer"]:
            # ModelScope always has c_attn; a fairseq model without scale_heads
            # has none, i.e. the equivalent of ones.
            ones[k] = list(v.shape)
        else:
            tensors[k] = list(v.shape)
    return {
        "fixture_rules_version": FIXTURE_RULES_VERSION,
        "seed": seed,
        "key_prefix": "",
        "order": list(sd.keys()),
        "tensors": tensors,
        "ones": ones,
        "tied": tied,
        "computed_buffers": computed,
        "fairseq_scale_heads": bool(ofa_kwargs["normformer"]),
        "num_fixture_values": int(sum(torch.Size(s).numel() for s in tensors.values())),
    }


def run_generator(model, tok, settings, input_ids, patch_images, patch_masks):
    gen = sequence_generator.SequenceGenerator(
        tokenizer=tok,
        beam_size=settings["beam_size"],
        max_len_a=settings["max_len_a"],
        max_len_b=settings["max_len_b"],
        min_len=settings["min_len"],
        normalize_scores=settings["normalize_scores"],
        len_penalty=settings["len_penalty"],
        unk_penalty=settings["unk_penalty"],
        temperature=settings["temperature"],
        match_source_len=settings["match_source_len"],
        no_repeat_ngram_size=settings["no_repeat_ngram_size"],
    )
    sample = {"net_input": {"input_ids": input_ids, "patch_images": patch_images, "patch_masks": patch_masks}}
    with torch.no_grad():
        hypos = gen.generate([model], sample)
    out = []
    for sent in hypos:
        out.append([
            {
                "tokens": h["tokens"].tolist(),
                "score": float(h["score"]),
                "positional_scores": [float(x) for x in h["positional_scores"].tolist()],
            }
            for h in sent
        ])
    return out


def record(name: str, spec: dict, out_root: str, layouts_root: str) -> None:
    torch.manual_seed(0)
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    kw = spec["ofa"]
    config = OFAConfig(**kw)
    model = OFAModel(config).eval()

    # -- weights --
    shapes = describe_state_dict(model, kw, spec["seed"])
    config_dict = {k: v for k, v in config.to_dict().items() if k not in HF_BOOKKEEPING}
    full = ckpts.modelscope_state_dict(shapes, config_dict)
    ref_sd = model.state_dict()
    for k, v in ref_sd.items():  # our index buffers must equal ModelScope's own
        if k in shapes["computed_buffers"]:
            assert torch.equal(full[k], v), f"computed buffer {k} differs from ModelScope's"
    result = model.load_state_dict(full, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, full[k]), k
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight

    # -- inputs --
    n_img = max(r[0] for r in ROWS) + 1
    images_u8 = make_images(n_img, spec["image_size"], spec["seed"] + 17)
    images = normalise(images_u8)
    rows_ids = [PROMPTS[p] for _, p, _ in ROWS]
    input_ids = right_pad(rows_ids)
    patch_images = images[[r[0] for r in ROWS]]
    patch_masks = torch.ones(len(ROWS), dtype=torch.bool)
    dec_in_rows = [[BOS] + t[:-1] for _, _, t in ROWS]
    targets = right_pad([t for _, _, t in ROWS])
    decoder_input_ids = right_pad(dec_in_rows)

    tensors = OrderedDict()
    tensors["images_u8"] = images_u8
    tensors["input_ids"] = input_ids
    tensors["decoder_input_ids"] = decoder_input_ids
    tensors["target_ids"] = targets

    def forward(ids, imgs, masks, dec):
        with torch.no_grad():
            enc = model.encoder(input_ids=ids, patch_images=imgs, patch_masks=masks, output_hidden_states=True)
            out = model(input_ids=ids, patch_images=imgs, patch_masks=masks, decoder_input_ids=dec,
                        output_hidden_states=True)
        return enc, out

    enc, out = forward(input_ids, patch_images, patch_masks, decoder_input_ids)
    assert torch.equal(out.encoder_last_hidden_state, enc.last_hidden_state)
    tensors["encoder.last_hidden_state"] = enc.last_hidden_state.contiguous()
    tensors["encoder.padding_mask"] = enc.padding_mask.contiguous()
    tensors["encoder.position_embedding"] = enc.position_embedding.contiguous()
    for i, h in enumerate(enc.hidden_states):
        tensors[f"encoder.hidden_states.{i}"] = h.contiguous()
    tensors["decoder.logits"] = out.logits.contiguous()
    for i, h in enumerate(out.decoder_hidden_states):
        tensors[f"decoder.hidden_states.{i}"] = h.contiguous()
    tensors["decoder.log_probs"] = torch.log_softmax(out.logits.float(), dim=-1).contiguous()

    # unpadded single-row runs (padding invariance of the reference itself)
    single_maxdiff = {}
    for b, (img_i, p, t) in enumerate(ROWS):
        ids1 = torch.tensor([PROMPTS[p]])
        dec1 = torch.tensor([[BOS] + t[:-1]])
        e1, o1 = forward(ids1, images[img_i:img_i + 1], torch.ones(1, dtype=torch.bool), dec1)
        tensors[f"single.{b}.encoder.last_hidden_state"] = e1.last_hidden_state.contiguous()
        tensors[f"single.{b}.decoder.logits"] = o1.logits.contiguous()
        n_img_tok = e1.last_hidden_state.shape[1] - ids1.shape[1]
        keep = n_img_tok + ids1.shape[1]
        d_enc = (enc.last_hidden_state[b, :keep] - e1.last_hidden_state[0]).abs().max().item()
        d_log = (out.logits[b, :dec1.shape[1]] - o1.logits[0]).abs().max().item()
        single_maxdiff[str(b)] = {"encoder": d_enc, "logits": d_log}

    # -- generation --
    tok = ToyTokenizer(kw["vocab_size"])
    generations = OrderedDict()
    for run_name, settings in GENERATION_RUNS.items():
        batch = run_generator(model, tok, settings, input_ids, patch_images, patch_masks)
        singles = []
        for b, (img_i, p, _) in enumerate(ROWS):
            singles.append(run_generator(model, tok, settings, torch.tensor([PROMPTS[p]]),
                                         images[img_i:img_i + 1], torch.ones(1, dtype=torch.bool))[0])
        generations[run_name] = {
            "settings": settings,
            "batch": batch,
            "single": singles,
            "batch_equals_single_top1": [batch[b][0]["tokens"] == singles[b][0]["tokens"] for b in range(len(ROWS))],
        }

    # sensitivity check: the outputs must depend on the image, not only on position
    with torch.no_grad():
        swapped = model(input_ids=input_ids, patch_images=patch_images.flip(0), patch_masks=patch_masks,
                        decoder_input_ids=decoder_input_ids).logits
    image_sensitivity = float((swapped - out.logits).abs().mean() / out.logits.abs().mean())

    # -- checkpoint layouts --
    lay_dir = os.path.join(layouts_root, name)
    os.makedirs(lay_dir, exist_ok=True)
    ms_dir = os.path.join(lay_dir, "modelscope_save_pretrained")
    model.save_pretrained(ms_dir, safe_serialization=False)
    ms_sd = torch.load(os.path.join(ms_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    ms_keys = list(ms_sd.keys())
    assert set(ms_keys) == set(full.keys()), "save_pretrained key set differs from state_dict()"
    assert ms_sd["decoder.output_projection.weight"].data_ptr() == ms_sd["encoder.embed_tokens.weight"].data_ptr()
    reloaded = OFAModel.from_pretrained(ms_dir).eval()
    with torch.no_grad():
        re_logits = reloaded(input_ids=input_ids, patch_images=patch_images, patch_masks=patch_masks,
                             decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(re_logits, out.logits), "save_pretrained round trip changed the logits"

    hf_dir = os.path.join(lay_dir, "hf")
    hf_sha = ckpts.write_hf_layout(hf_dir, config_dict, full)
    hf_sha_again = ckpts.write_hf_layout(os.path.join(lay_dir, "hf_again"), config_dict,
                                         ckpts.modelscope_state_dict(shapes, config_dict))
    fs_sd = ckpts.fairseq_state_dict(shapes, config_dict)
    model_args = ckpts.fairseq_model_args(config_dict, spec["arch"], spec["image_size"])
    fs_sha = ckpts.write_fairseq_layout(os.path.join(lay_dir, "fairseq", "checkpoint.pt"), model_args, fs_sd, "cfg")
    fs_args_sha = ckpts.write_fairseq_layout(os.path.join(lay_dir, "fairseq_args", "checkpoint.pt"), model_args, fs_sd, "args")
    # the fairseq layout maps back onto ModelScope exactly
    fs_loaded = torch.load(os.path.join(lay_dir, "fairseq", "checkpoint.pt"), map_location="cpu", weights_only=False)
    back = OrderedDict()
    for k, v in fs_loaded["model"].items():
        if k in ("encoder.version", "decoder.version"):
            continue
        back[ckpts.fairseq_to_modelscope_key(k)] = v
    back["decoder.image_position_idx"] = ref_sd["decoder.image_position_idx"]
    for k in shapes["ones"]:
        back[k] = torch.ones(shapes["ones"][k])
    res = reloaded.load_state_dict(back, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    with torch.no_grad():
        fs_logits = reloaded(input_ids=input_ids, patch_images=patch_images, patch_masks=patch_masks,
                             decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(fs_logits, out.logits), "fairseq layout round trip changed the logits"
    renamed = {k: ckpts.modelscope_to_fairseq_key(k) for k in full if ckpts.modelscope_to_fairseq_key(k) != k}

    # -- write fixtures --
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "shapes.json"), "w") as f:
        json.dump(shapes, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "goldens.safetensors"))
    goldens = OrderedDict(
        reference={
            "implementation": "modelscope 1.40.2 modelscope/models/multi_modal/ofa (OFAModel, generate/sequence_generator.py)",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "mode": "eval, float32, CPU, torch.no_grad",
        },
        config_name=name,
        arch_for_fairseq_args=spec["arch"],
        seed=spec["seed"],
        special_ids={"bos": BOS, "pad": PAD, "eos": EOS, "unk": UNK},
        image={
            "size": spec["image_size"],
            "patch_grid": [spec["image_size"] // 16, spec["image_size"] // 16],
            "source": "images_u8 (uint8, N x 3 x H x W) in goldens.safetensors",
            "normalisation": "x = (u8.float() / 255 - 0.5) / 0.5 (float32)",
            "generator": "make_images(n, size, seed + 17) in record_golden.py",
        },
        prompts=PROMPTS,
        rows=[{"image": i, "prompt": p, "target": t} for i, p, t in ROWS],
        padding={
            "side": "right",
            "pad_id": PAD,
            "note": "fairseq OFA collates with data_utils.collate_tokens(left_pad=False); "
                    "text positions are 0..L-1 whatever the padding, so left padding would change results",
        },
        batch_tensors={
            "input_ids": "rows' prompts, right-padded",
            "decoder_input_ids": "[bos] + target[:-1], right-padded (teacher forcing)",
            "target_ids": "target, right-padded",
            "encoder.last_hidden_state": "after the encoder's final layer_norm; image tokens first, then text",
            "encoder.hidden_states.i": "input of encoder layer i (i = num_layers: last layer output, before final layer_norm)",
            "encoder.padding_mask": "True = padding (image part all False)",
            "encoder.position_embedding": "pos_ln/image_pos_ln-normalised absolute position embeddings (image then text)",
            "decoder.logits": "teacher-forced logits (output projection after the decoder's final layer_norm)",
            "decoder.hidden_states.i": "input of decoder layer i (last one: before final layer_norm)",
            "decoder.log_probs": "log_softmax(decoder.logits)",
            "single.b.*": "row b run alone, unpadded",
            "compare": "only non-padding positions are meaningful; padded query rows are whatever the reference computes",
        },
        single_vs_batch_max_abs_diff=single_maxdiff,
        image_sensitivity_swapped_images_rel_logit_change=image_sensitivity,
        generation_common={
            "implementation": "ModelScope SequenceGenerator + BeamSearch (fairseq semantics)",
            "decoder_start": "tokens[:, 0] = bos (0)",
            "max_len": "int(max_len_a * src_len + max_len_b), src_len = padded input_ids width; "
                       "at step >= max_len only eos is allowed, so at most max_len tokens + eos",
            "min_len": "eos is -inf while step < min_len",
            "pad": "never selected (-inf); unk gets -unk_penalty",
            "scores": "finalised hypothesis score = sum of token log-probs / (len incl. eos) ** len_penalty "
                      "when normalize_scores",
            "candidates": "top 2*beam over beam*vocab per sentence; eos candidates among the first beam finalise; "
                          "a sentence stops when beam hypotheses are finalised",
            "no_repeat_ngram": "bans tokens completing an n-gram already in tokens[:, :step+1] (bos included)",
            "kv_cache": "none: ModelScope's generator re-runs the decoder on the whole prefix each step",
            "output_tokens": "hypothesis tokens exclude the leading bos and end with eos",
            "ensemble": "single model",
        },
        generation=generations,
        layouts={
            "modelscope_save_pretrained": {
                "files": sorted(os.listdir(ms_dir)),
                "key_prefix": "",
                "num_keys": len(ms_keys),
                "tied_keys_present": ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                      "decoder.output_projection.weight"],
                "sha256_pytorch_model_bin": ckpts.sha256_file(os.path.join(ms_dir, "pytorch_model.bin")),
                "note": "what OFAModel.save_pretrained(safe_serialization=False) writes; its pickle also carries "
                        "the state dict's _metadata, so the bytes differ from write_hf_layout's",
            },
            "hf_layout": {
                "writer": "tests/ofa_fixture_checkpoints.py write_hf_layout(folder, config.json dict, "
                          "modelscope_state_dict(shapes, config))",
                "sha256": hf_sha,
                "rewrite_identical": hf_sha == hf_sha_again,
            },
            "fairseq_cfg_style": {
                "writer": "write_fairseq_layout(<dir>/checkpoint.pt, fairseq_model_args(config, arch, image_size), "
                          "fairseq_state_dict(shapes, config), style='cfg')",
                "file_name": "checkpoint.pt",
                "sha256": fs_sha,
                "top_level_keys": list(fs_loaded.keys()),
                "num_model_keys": len(fs_loaded["model"]),
            },
            "fairseq_args_style": {
                "writer": "same, style='args'",
                "file_name": "checkpoint.pt",
                "sha256": fs_args_sha,
            },
            "renamed_keys_modelscope_to_fairseq": renamed,
            "byte_stability": "sha256 values hold for torch 2.13.0 and these file names; "
                              "compare state dicts otherwise",
        },
    )
    with open(os.path.join(out_dir, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(shapes['tensors'])} fixture tensors ({shapes['num_fixture_values']} values), "
          f"image sensitivity {image_sensitivity:.3f}, single-vs-batch {single_maxdiff}")
    for run_name, g in generations.items():
        print(f"  {run_name}: " + " | ".join(str(s[0]['tokens']) for s in g["batch"]),
              "batch==single:", g["batch_equals_single_top1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "ofa"))
    ap.add_argument("--layouts-dir", default="/tmp/ofa-layouts")
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    for name, spec in CONFIGS.items():
        if args.only and name != args.only:
            continue
        record(name, spec, args.out, args.layouts_dir)


if __name__ == "__main__":
    main()
