"""OFA checkpoints: fairseq .pt and HF/ModelScope folders read into ModelScope names; `convert` writes them
as safetensors once. Everything is built here from tiny random state dicts with the real key names."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.errors import SpecError
from mue_bench.models.ofa import checkpoint as ck
from mue_bench.models.ofa.tokenizer import BIN_TOKENS, CODE_TOKENS
from tests.test_ofa_inputs import train_bpe

D, FFN, HEADS = 16, 32, 2
TEXT = ["a man riding a horse on the beach", "what does the image describe?", "two dogs play in the snow"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe"), TEXT, vocab_size=300)


def rows(bpe_dir) -> int:
    return len(json.loads((bpe_dir / "vocab.json").read_text())) + CODE_TOKENS + BIN_TOKENS


def _linear(sd, name, out, inp, g):
    sd[f"{name}.weight"] = torch.randn(out, inp, generator=g)
    sd[f"{name}.bias"] = torch.randn(out, generator=g)


def _norm(sd, name, n, g):
    sd[f"{name}.weight"] = torch.randn(n, generator=g)
    sd[f"{name}.bias"] = torch.randn(n, generator=g)


def fairseq_weights(vocab: int, seed: int = 0, resnet: str = "resnet50") -> dict[str, torch.Tensor]:
    """A one-layer OFA state dict in fairseq's names (unify_transformer.py / unify_transformer_layer.py)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(vocab, D, generator=g)
    sd = {"encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": emb,
          "decoder.output_projection.weight": emb,  # one tensor under three names, as OFA ties them
          "encoder.version": torch.tensor([3.0]), "decoder.version": torch.tensor([3.0]),
          "encoder.token_rp_bucket": torch.arange(9).view(3, 3),
          "decoder.image_position_idx": torch.cat([torch.arange(5), torch.full((769,), 1024)])}  # 768 in ModelScope
    for key in ck.resnet_keys(resnet):
        sd[key] = torch.randn(4, generator=g)
    sd["encoder.embed_images.bn1.num_batches_tracked"] = torch.tensor(7)
    _linear(sd, "encoder.image_proj", D, 1024, g)
    for side in ("encoder", "decoder"):
        _norm(sd, f"{side}.layer_norm", D, g)
        _norm(sd, f"{side}.layernorm_embedding", D, g)
        p = f"{side}.layers.0"
        attns = ["self_attn"] + (["encoder_attn"] if side == "decoder" else [])
        for attn in attns:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                _linear(sd, f"{p}.{attn}.{proj}", D, D, g)
            sd[f"{p}.{attn}.c_attn"] = torch.randn(HEADS, generator=g)
        _norm(sd, f"{p}.self_attn_layer_norm", D, g)
        _norm(sd, f"{p}.{'attn_ln' if side == 'encoder' else 'self_attn_ln'}", D, g)
        if side == "decoder":
            _norm(sd, f"{p}.encoder_attn_layer_norm", D, g)
            _norm(sd, f"{p}.cross_attn_ln", D, g)
        _linear(sd, f"{p}.fc1", FFN, D, g)
        _linear(sd, f"{p}.fc2", D, FFN, g)
        _norm(sd, f"{p}.ffn_layernorm", FFN, g)
        _norm(sd, f"{p}.final_layer_norm", D, g)
    return sd


def fairseq_args(**over) -> argparse.Namespace:
    fields = dict(arch="ofa_tiny", task="caption", encoder_embed_dim=D, encoder_ffn_embed_dim=FFN, encoder_layers=1,
                  decoder_layers=1, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, scale_attn=True,
                  scale_fc=True, scale_heads=True, patch_image_size=480, max_src_length=80, max_tgt_length=20,
                  lr=[1e-5], best_checkpoint_metric="cider")
    return argparse.Namespace(**{**fields, **over})


@pytest.fixture()
def fairseq_pt(tmp_path, bpe):
    """A tiny `.pt` laid out as OFA's releases: args Namespace, model, optimizer and trainer state, EMA."""
    n = rows(bpe)
    state = {"args": fairseq_args(), "model": fairseq_weights(n),
             "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion", "num_updates": 9}],
             "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}, "loss_scale": 128.0},
             "extra_state": {"ema": fairseq_weights(n, seed=1), "best": np.float64(1.2),
                             "train_iterator": {"epoch": 2}}}
    path = tmp_path / "caption_tiny_best.pt"
    torch.save(state, path)
    return path, state


def hf_folder(tmp_path, bpe, prefix: str = ""):
    """A tiny HF-port/ModelScope folder: config.json with OFAConfig fields, pytorch_model.bin, vocab files."""
    fs = fairseq_weights(rows(bpe), seed=2)
    weights, _ = ck.map_fairseq_state(fs, tmp_path)
    folder = tmp_path / "ofa-tiny-hf"
    folder.mkdir()
    config = ck.fairseq_config(vars(fairseq_args()), rows(bpe), tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({prefix + k: v for k, v in weights.items()}, folder / "pytorch_model.bin")
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((bpe / name).read_bytes())
    return folder, weights


# --- fairseq .pt ----------------------------------------------------------------------------------------


def test_fairseq_args_become_ofaconfig_fields(fairseq_pt, bpe):
    ckpt = ck.read_checkpoint(fairseq_pt[0], tokenizer=bpe)
    c = ckpt.config
    assert (c["d_model"], c["encoder_ffn_dim"], c["decoder_ffn_dim"]) == (D, FFN, FFN)
    assert (c["encoder_layers"], c["decoder_layers"], c["encoder_attention_heads"]) == (1, 1, HEADS)
    assert c["resnet_type"] == "resnet50"  # ofa_tiny's default (ofa.py), not in args
    assert c["vocab_size"] == rows(bpe) and c["max_position_embeddings"] == 1024
    assert c["normformer"] is True and c["scale_embedding"] is False and c["activation_function"] == "gelu"
    assert (c["pad_token_id"], c["bos_token_id"], c["eos_token_id"]) == (1, 0, 2)
    assert ckpt.task["patch_image_size"] == 480 and ckpt.task["task"] == "caption"


def test_fairseq_keys_map_to_modelscope_names(fairseq_pt, bpe):
    state = ck.read_checkpoint(fairseq_pt[0], tokenizer=bpe).state
    src = fairseq_pt[1]["model"]
    renames = {
        "encoder.layers.0.attn_ln.weight": "encoder.layers.0.self_attn_mid_layer_norm.weight",
        "encoder.layers.0.ffn_layernorm.bias": "encoder.layers.0.ffn_layer_norm.bias",
        "decoder.layers.0.self_attn_ln.weight": "decoder.layers.0.self_attn_mid_layer_norm.weight",
        "decoder.layers.0.cross_attn_ln.bias": "decoder.layers.0.cross_attn_mid_layer_norm.bias",
        "decoder.layers.0.encoder_attn.k_proj.weight": "decoder.layers.0.cross_attn.k_proj.weight",
        "decoder.layers.0.encoder_attn.c_attn": "decoder.layers.0.cross_attn.c_attn",
        "decoder.layers.0.encoder_attn_layer_norm.weight": "decoder.layers.0.cross_attn_layer_norm.weight",
        "encoder.layers.0.self_attn.q_proj.weight": "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.embed_images.layer3.5.bn3.running_var": "encoder.embed_images.layer3.5.bn3.running_var",
    }
    for old, new in renames.items():
        assert torch.equal(state[new], src[old]), old
    assert "encoder.version" not in state and "decoder.version" not in state
    assert "decoder.image_position_idx" not in state  # other content in ModelScope: the model builds its own
    assert torch.equal(state["encoder.token_rp_bucket"], src["encoder.token_rp_bucket"])  # same in both: kept
    fairseq_only = ("attn_ln", "self_attn_ln", "cross_attn_ln", "encoder_attn", "ffn_layernorm")
    assert not [k for k in state if any(f".{m}." in k for m in fairseq_only)]
    # frozen-BN checkpoints lack the counters; ModelScope's BatchNorm2d has them (eval never reads them)
    assert state["encoder.embed_images.layer1.0.bn1.num_batches_tracked"].item() == 0
    assert state["encoder.embed_images.bn1.num_batches_tracked"].item() == 7


def test_cfg_layout_with_namespace_model_and_task_dict(tmp_path, bpe):
    cfg = {"model": fairseq_args(task=None), "task": {"_name": "snli_ve", "patch_image_size": 480,
                                                       "add_caption": True, "prompt_type": "prev_output"}}
    torch.save({"cfg": cfg, "model": fairseq_weights(rows(bpe))}, tmp_path / "snli_ve_tiny.pt")
    ckpt = ck.read_checkpoint(tmp_path / "snli_ve_tiny.pt", tokenizer=bpe)
    assert ckpt.config["d_model"] == D
    assert ckpt.task["task"] == "snli_ve" and ckpt.task["prompt_type"] == "prev_output" and ckpt.task["add_caption"]


def test_heads_without_scale_heads_get_unit_scales(tmp_path, bpe):
    weights = {k: v for k, v in fairseq_weights(rows(bpe)).items() if not k.endswith("c_attn")}
    torch.save({"args": fairseq_args(scale_heads=False), "model": weights}, tmp_path / "noscale.pt")
    state = ck.read_checkpoint(tmp_path / "noscale.pt", tokenizer=bpe).state
    assert torch.equal(state["decoder.layers.0.cross_attn.c_attn"], torch.ones(HEADS))


def test_convert_fairseq_round_trips_every_tensor(fairseq_pt, bpe, tmp_path):
    path, raw = fairseq_pt
    source = ck.read_checkpoint(path, tokenizer=bpe).state
    out = ck.convert_checkpoint(path, tmp_path / "converted", tokenizer=bpe)
    back = ck.read_converted(out)
    assert set(back) == set(source)
    for name, tensor in source.items():
        assert torch.equal(back[name], tensor), name
    assert torch.equal(back["decoder.output_projection.weight"], raw["model"]["encoder.embed_tokens.weight"])
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == len(source) - 2  # the tied embedding is stored once
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows(bpe)
    task = json.loads((out / "ofa_task.json").read_text())
    assert task["layout"] == "fairseq" and task["ema"] is False and "encoder.version" in task["dropped_keys"]
    assert (out / "vocab.json").read_bytes() == (bpe / "vocab.json").read_bytes()
    assert (out / "merges.txt").is_file()


def test_convert_ema_takes_the_ema_weights(fairseq_pt, bpe, tmp_path):
    path, raw = fairseq_pt
    back = ck.read_converted(ck.convert_checkpoint(path, tmp_path / "ema", ema=True, tokenizer=bpe))
    ema = raw["extra_state"]["ema"]
    assert torch.equal(back["decoder.layers.0.cross_attn.q_proj.weight"],
                       ema["decoder.layers.0.encoder_attn.q_proj.weight"])
    assert not torch.equal(back["encoder.embed_tokens.weight"], raw["model"]["encoder.embed_tokens.weight"])


def test_ema_asked_of_a_checkpoint_without_it(tmp_path, bpe):
    torch.save({"args": fairseq_args(), "model": fairseq_weights(rows(bpe))}, tmp_path / "plain.pt")
    with pytest.raises(SpecError, match=r"plain\.pt: no EMA weights"):
        ck.read_checkpoint(tmp_path / "plain.pt", ema=True)


def test_convert_from_fairseq_bpe_files(fairseq_pt, bpe, tmp_path):
    """OFA's own utils/BPE: GPT-2's encoder.json + vocab.bpe, and dict.txt giving fairseq's order."""
    vocab = json.loads((bpe / "vocab.json").read_text())
    bpe_tokens = [t for t in vocab if t not in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    fs_dir = tmp_path / "BPE"
    fs_dir.mkdir()
    gpt2_ids = {t: 1000 + i for i, t in enumerate(reversed(bpe_tokens))}  # GPT-2's ids differ from fairseq's
    (fs_dir / "encoder.json").write_text(json.dumps(gpt2_ids))
    (fs_dir / "vocab.bpe").write_bytes((bpe / "merges.txt").read_bytes())
    (fs_dir / "dict.txt").write_text("".join(f"{gpt2_ids[t]} 5\n" for t in bpe_tokens))
    out = ck.convert_checkpoint(fairseq_pt[0], tmp_path / "from-bpe", tokenizer=fs_dir)
    written = json.loads((out / "vocab.json").read_text())
    # fairseq's order: the four specials, then id 4 + line of dict.txt, then <mask> (BART's vocab.json order)
    assert written == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3,
                       **{t: 4 + i for i, t in enumerate(bpe_tokens)}, "<mask>": 4 + len(bpe_tokens)}


# --- HF / ModelScope folder -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "model."])
def test_convert_hf_folder_round_trips(tmp_path, bpe, prefix):
    folder, weights = hf_folder(tmp_path, bpe, prefix)
    out = ck.convert_checkpoint(folder, tmp_path / "converted")
    back = ck.read_converted(out)
    for name, tensor in weights.items():
        assert torch.equal(back[name], tensor), name
    assert (out / "merges.txt").read_bytes() == (folder / "merges.txt").read_bytes()


def test_hf_folder_vocab_that_does_not_match_the_embeddings(tmp_path, bpe):
    folder, _ = hf_folder(tmp_path, bpe)
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["extra"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(SpecError, match=r"vocab\.json: the tokenizer has \d+ ids .* embeddings have \d+ rows"):
        ck.read_checkpoint(folder)


def test_hf_config_vocab_size_that_does_not_match_the_rows(tmp_path, bpe):
    folder, _ = hf_folder(tmp_path, bpe)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 59457}))
    with pytest.raises(SpecError, match=r"config\.json: vocab_size 59457 does not match the \d+ rows"):
        ck.read_checkpoint(folder)


# --- refusals -------------------------------------------------------------------------------------------


def test_pt_without_model_is_not_an_ofa_checkpoint(tmp_path):
    torch.save({"args": fairseq_args(), "weights": {}}, tmp_path / "x.pt")
    with pytest.raises(SpecError, match=r"x\.pt: not an OFA checkpoint \(no `model`"):
        ck.read_checkpoint(tmp_path / "x.pt")


def test_pt_with_foreign_weights_is_not_an_ofa_checkpoint(tmp_path):
    torch.save({"args": fairseq_args(), "model": {"bert.embeddings.weight": torch.ones(2)}}, tmp_path / "bert.pt")
    with pytest.raises(SpecError, match=r"bert\.pt: `model` holds no OFA weights"):
        ck.read_checkpoint(tmp_path / "bert.pt")


def test_truncated_pt_names_the_file(fairseq_pt, tmp_path):
    data = fairseq_pt[0].read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(SpecError, match=r"torn\.pt: not a readable PyTorch checkpoint"):
        ck.read_checkpoint(tmp_path / "torn.pt")


def test_missing_resnet_key_names_the_first(tmp_path, bpe):
    weights = fairseq_weights(rows(bpe))
    del weights["encoder.embed_images.layer2.0.downsample.0.weight"], weights["encoder.embed_images.layer3.1.bn2.bias"]
    torch.save({"args": fairseq_args(), "model": weights}, tmp_path / "nores.pt")
    with pytest.raises(SpecError, match=r"no ResNet weight encoder\.embed_images\.layer2\.0\.downsample\.0\.weight"):
        ck.read_checkpoint(tmp_path / "nores.pt")


def test_tokenizer_that_does_not_match_the_pt(fairseq_pt, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXT, vocab_size=280, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.save_model(str(other))
    with pytest.raises(SpecError, match=r"other/vocab\.json: the tokenizer has \d+ ids"):
        ck.read_checkpoint(fairseq_pt[0], tokenizer=other)


def test_malicious_pt_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save(Boom(), tmp_path / "evil.pt")
    with pytest.raises(SpecError, match="not an OFA checkpoint"):
        ck.convert_checkpoint(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_existing_output_needs_force_and_failures_leave_nothing(fairseq_pt, bpe, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(SpecError, match="not empty"):
        ck.convert_checkpoint(fairseq_pt[0], dst, tokenizer=bpe)

    def torn(ckpt, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_write", torn)
    with pytest.raises(OSError):
        ck.convert_checkpoint(fairseq_pt[0], dst, tokenizer=bpe, force=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]  # the old folder untouched
    monkeypatch.undo()
    ck.convert_checkpoint(fairseq_pt[0], dst, tokenizer=bpe, force=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()


def test_pt_without_tokenizer_files_says_how_to_give_them(fairseq_pt, tmp_path):
    with pytest.raises(SpecError, match="pass --tokenizer DIR"):
        ck.convert_checkpoint(fairseq_pt[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- command --------------------------------------------------------------------------------------------


def test_convert_command(fairseq_pt, bpe, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["convert", str(fairseq_pt[0]), str(tmp_path / "out"), "--tokenizer", str(bpe), "--ema"])
    assert ok.exit_code == 0, ok.output
    assert "wrote" in ok.output and (tmp_path / "out" / "model.safetensors").is_file()
    again = runner.invoke(app, ["convert", str(fairseq_pt[0]), str(tmp_path / "out"), "--tokenizer", str(bpe)])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
