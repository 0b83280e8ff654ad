"""mue-bench's OFA (models/ofa) on tiny random configs: with nothing exiting, the exit engine reproduces the
model's own plain forward and generation (and, where tests/fixtures/ofa/ holds goldens recorded with
ModelScope's OFA, those); with exits on, a sample's result does not depend on its batch-mates, padding or
batch compaction; the cost model agrees with torch's FLOP counter; checkpoints load strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mue_bench.errors import SpecError
from mue_bench.models.ofa.adapter import OFAAdapter, OFABatch, collate
from mue_bench.models.ofa.config import PRESETS, OFAConfig
from mue_bench.models.ofa.model import OFAModel, load_weights, tied_names
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.decoder import MuEStepper
from mue_bench.mue.encoder import run_encoder
from mue_bench.mue.engine import run_batch, run_model
from tests.conftest import RowCounter
from tests.ofa_fixture_checkpoints import load_shapes_doc, modelscope_state_dict
from tests.ofa_fixture_weights import fixture_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "ofa"
GOLDEN_CONFIGS = sorted(p.name for p in FIXTURES.iterdir() if (p / "goldens.json").is_file())

TINY = dict(vocab_size=64, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
            decoder_ffn_dim=128, encoder_layers=4, decoder_layers=4, resnet_type="resnet18", token_bucket_size=16,
            image_bucket_size=8, max_position_embeddings=64, code_image_size=64)
PROMPTS = [[0, 5, 6, 7, 8, 9, 2], [0, 10, 2], [0, 11, 12, 13, 2]]  # BOS ... EOS, right-padded in a batch


def _batch(seed: int = 0, size: int = 64) -> OFABatch:
    g = torch.Generator().manual_seed(seed)
    return collate(list(torch.randn(len(PROMPTS), 3, size, size, generator=g)), PROMPTS, pad_id=1)


def tiny_adapter() -> OFAAdapter:
    """A tiny random OFA with the reference fixtures' weight rules (tests/ofa_fixture_weights.py), under which
    outputs depend on the image and on every position term, and exits vary by sample and step."""
    model = OFAModel(OFAConfig.from_dict(TINY))
    shapes = {k: v.shape for k, v in model.state_dict().items() if v.is_floating_point()}
    model.load_state_dict(fixture_state_dict(shapes, seed=7), strict=False)
    return OFAAdapter(model)


@pytest.fixture(scope="module")
def adapter() -> OFAAdapter:
    return tiny_adapter()


@pytest.fixture(scope="module")
def batch() -> OFABatch:
    return _batch()


def _median_thresholds(adapter, batch, mode: str, **kw) -> ExitConfig:
    """Thresholds halfway between two observed similarities near each stream's median, so that some exits
    fire and some do not, and float noise between a batch and a lone sample cannot flip a decision."""
    full = run_batch(adapter, batch, ExitConfig(encoder_mode=mode), adapter.decoding(max_len=10)).samples

    def between(values: list[float]) -> float:
        v = sorted(x for x in values if x == x)
        return (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    med = [between([v for s in full for v in vals(s)]) for vals in (
        lambda s: s.enc_img_sims, lambda s: s.enc_txt_sims, lambda s: [v for d in s.dec_sims for v in d])]
    return ExitConfig(tau_img=med[0], tau_txt=med[1], tau_dec=med[2], encoder_mode=mode, **kw)


# --- ModelScope's goldens ---------------------------------------------------------------------------------
class Golden:
    """A fixture recorded with ModelScope's OFAModel and SequenceGenerator (tools/ofa_reference/): its config,
    its weights rebuilt under ModelScope's state-dict names, inputs and outputs."""

    def __init__(self, name: str):
        from safetensors.torch import load_file

        folder = FIXTURES / name
        self.shapes, config = load_shapes_doc(str(folder))
        self.state = modelscope_state_dict(self.shapes, config)
        self.model = OFAModel(OFAConfig.from_dict(config))
        load_weights(self.model, self.state, f"{name} fixture")
        self.adapter = OFAAdapter(self.model)
        self.doc = json.loads((folder / "goldens.json").read_text())
        self.t = load_file(str(folder / "goldens.safetensors"))
        rows = self.doc["rows"]
        images = (self.t["images_u8"].float() / 255 - 0.5) / 0.5
        ids = self.t["input_ids"]
        self.batch = OFABatch(images[[r["image"] for r in rows]], ids, ids.ne(self.doc["special_ids"]["pad"]))

    def decoding(self, run: str):
        settings = self.doc["generation"][run]["settings"]
        assert settings["max_len_a"] == 0 and settings["min_len"] == 1 and settings["len_penalty"] == 1.0
        # fairseq's max_len_b tokens, then EOS: mue-bench's max_len counts the EOS
        return self.adapter.decoding(num_beams=settings["beam_size"], max_len=settings["max_len_b"] + 1,
                                     no_repeat_ngram=settings["no_repeat_ngram_size"])


@pytest.fixture(scope="module", params=GOLDEN_CONFIGS)
def golden(request) -> Golden:
    return Golden(request.param)


def test_golden_checkpoint_has_exactly_our_tensor_names(golden):
    """ModelScope's OFAModel.state_dict() keys are this model's: nothing missing, nothing unexpected."""
    assert set(golden.model.state_dict()) == set(golden.shapes["order"])
    for name, tensor in golden.model.state_dict().items():
        assert torch.equal(tensor, golden.state[name]), name  # the index buffers computed here included


def test_golden_encoder_output_through_the_engine(golden):
    raw = run_model(golden.adapter, golden.batch, ExitConfig(encoder_mode="freeze"), golden.adapter.decoding(max_len=1))
    assert torch.equal(~raw.encoder.mask, golden.t["encoder.padding_mask"])
    torch.testing.assert_close(raw.encoder.out, golden.t["encoder.last_hidden_state"], rtol=0, atol=1e-4)


def test_golden_teacher_forced_logits(golden):
    """The plain forward's logits, and the engine's per-step log-probs (its cache, position biases and head)
    fed the same target tokens one step at a time."""
    dec_ids, target = golden.t["decoder_input_ids"], golden.t["target_ids"]
    with torch.no_grad():
        _, logits = golden.model(golden.batch.images, golden.batch.ids, golden.batch.mask, dec_ids)
    torch.testing.assert_close(logits, golden.t["decoder.logits"], rtol=0, atol=1e-4)
    adapter, real = golden.adapter, target.ne(golden.doc["special_ids"]["pad"])
    with torch.no_grad():
        streams = adapter.embed_streams(golden.batch)
        enc = run_encoder(adapter, streams, ExitConfig(encoder_mode="freeze"))
        stepper = MuEStepper(adapter, enc.out, enc.mask, ExitConfig(encoder_mode="freeze"), 1, dec_ids.shape[1])
        steps = torch.stack([stepper.step(dec_ids[:, t], real[:, t]) for t in range(dec_ids.shape[1])], 1)
    torch.testing.assert_close(steps[real], golden.t["decoder.log_probs"][real], rtol=0, atol=1e-4)


@pytest.mark.parametrize("run", ["greedy", "beam5", "caption_beam5"])
def test_golden_generations_are_token_identical_through_the_engine(golden, run):
    decoding = golden.decoding(run)
    gen = golden.doc["generation"][run]
    samples = run_batch(golden.adapter, golden.batch, ExitConfig(encoder_mode="freeze"), decoding).samples
    assert [s.tokens for s in samples] == [hyps[0]["tokens"] for hyps in gen["batch"]]
    for b, hyps in enumerate(gen["single"]):
        one = golden.batch.select([b])
        [s] = run_batch(golden.adapter, one, ExitConfig(encoder_mode="freeze"), decoding).samples
        assert s.tokens == hyps[0]["tokens"]


# --- no exit: the engine is the model ------------------------------------------------------------------
@pytest.mark.parametrize(("beams", "ngram"), [(1, 0), (1, 3), (3, 0), (5, 2)])
def test_no_exit_is_token_identical_to_the_models_own_generate(adapter, batch, beams, ngram):
    decoding = adapter.decoding(num_beams=beams, max_len=10, no_repeat_ngram=ngram)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert ours == adapter.reference_generate(batch, decoding)
    for b in range(len(PROMPTS)):
        one = batch.select([b])
        assert [s.tokens for s in run_batch(adapter, one, ExitConfig(encoder_mode="freeze"), decoding).samples] \
            == adapter.reference_generate(one, decoding)


def test_no_exit_encoder_output_equals_the_plain_joint_encoder(adapter, batch):
    raw = run_model(adapter, batch, ExitConfig(encoder_mode="freeze"), adapter.decoding(max_len=2))
    with torch.no_grad():
        enc_out, enc_mask, _ = adapter.model.encode(batch.images, batch.ids, batch.mask)
    assert torch.equal(raw.encoder.mask, enc_mask)
    torch.testing.assert_close(raw.encoder.out, enc_out, rtol=1e-5, atol=1e-5)


def test_generations_follow_fairseqs_rules_and_are_not_degenerate(adapter, batch):
    """No pad, no EOS first, at most max_len tokens ending in EOS (fairseq forces it at the last step);
    outputs differ by sample and step, so the exactness tests do not pass vacuously."""
    for beams in (1, 3):
        out = adapter.reference_generate(batch, adapter.decoding(num_beams=beams, max_len=10, no_repeat_ngram=3))
        assert all(t[-1] == adapter.eos_id and len(t) <= 10 and t[0] != adapter.eos_id for t in out)
        assert all(adapter.pad_id not in t for t in out)
        assert len({tuple(t) for t in out}) == len(out) and all(len(set(t)) > 3 for t in out)


@pytest.mark.parametrize("beams", [1, 3])
def test_ignore_eos_generates_max_len_tokens(adapter, batch, beams):
    decoding = adapter.decoding(num_beams=beams, max_len=7, ignore_eos=True)
    ours = [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]
    assert [len(t) for t in ours] == [7] * len(PROMPTS)
    assert ours == adapter.reference_generate(batch, decoding)


# --- streams and their position biases ------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_query_subset_of_a_joint_layer_matches_the_full_layer(adapter, batch, modality):
    """freeze mode's saving: updating one modality's positions gives what the full layer gives there."""
    streams = adapter.embed_streams(batch)
    n_img = streams.image.shape[1]
    queries = slice(0, n_img) if modality == "image" else slice(n_img, None)
    h, mask = torch.cat([streams.image, streams.text], 1), torch.cat([streams.image_mask, streams.text_mask], 1)
    with torch.no_grad():
        full, part = adapter.encoder_layer(1, h, mask), adapter.encoder_layer(1, h, mask, queries)
    torch.testing.assert_close(part, full[:, queries], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_split_stream_is_the_joint_layer_with_the_other_modality_masked(adapter, batch, modality):
    """`split` streams carry the position biases of their own positions: a stream alone equals the joint layer
    in which the other modality's keys are masked out."""
    streams = adapter.embed_streams(batch)
    n_img = streams.image.shape[1]
    h, mask = torch.cat([streams.image, streams.text], 1), torch.cat([streams.image_mask, streams.text_mask], 1)
    own = slice(0, n_img) if modality == "image" else slice(n_img, None)
    keys = torch.zeros_like(mask)
    keys[:, own] = mask[:, own]
    alone = streams.image if modality == "image" else streams.text
    with torch.no_grad():
        joint = adapter.encoder_layer(2, h, keys, own)
        split = adapter.encoder_layer(2, alone, mask[:, own], stream=modality)
    real = mask[:, own]
    torch.testing.assert_close(split[real], joint[real], rtol=1e-5, atol=1e-5)


# --- exits on: a sample's result is its own ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["freeze", "split"])
@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 3])
def test_exits_in_a_padded_batch_equal_exits_alone(adapter, batch, mode, kv_fill, beams):
    cfg = _median_thresholds(adapter, batch, mode, kv_fill=kv_fill)
    decoding = adapter.decoding(num_beams=beams, max_len=10, no_repeat_ngram=3)
    together = run_batch(adapter, batch, cfg, decoding).samples
    assert any(s.enc_img_layers < adapter.n_enc_layers for s in together)
    assert any(u < adapter.n_dec_layers for s in together for u in s.dec_layers)
    for b, s in enumerate(together):
        alone = run_batch(adapter, batch.select([b]), cfg, decoding).samples[0]
        assert (s.tokens, s.enc_img_layers, s.enc_txt_layers, s.dec_layers) == \
            (alone.tokens, alone.enc_img_layers, alone.enc_txt_layers, alone.dec_layers)


@pytest.mark.parametrize("mode", ["freeze", "split"])
@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batch_compaction_computes_fewer_rows_and_changes_no_result(adapter, batch, mode, kv_fill, beams):
    cfg = _median_thresholds(adapter, batch, mode, kv_fill=kv_fill)
    decoding = adapter.decoding(num_beams=beams, max_len=10, no_repeat_ngram=3)
    counter = RowCounter(adapter)
    try:
        compacted = run_batch(adapter, batch, cfg, decoding).samples
        compacted_rows, counter.rows = counter.rows, 0
        adapter.row_subsets = False
        masked = run_batch(adapter, batch, cfg, decoding).samples
    finally:  # the adapter is shared by the module's tests
        counter.restore()
        vars(adapter).pop("row_subsets", None)
    assert compacted_rows < counter.rows
    for c, m in zip(compacted, masked):
        assert (c.tokens, c.enc_img_layers, c.enc_txt_layers, c.dec_layers, c.flops) == \
            (m.tokens, m.enc_img_layers, m.enc_txt_layers, m.dec_layers, m.flops)


@pytest.mark.parametrize("kv_fill", ["copy", "propagate", "official"])
def test_every_kv_fill_leaves_one_slot_per_step_in_every_layer(adapter, batch, kv_fill):
    """The decoder's position biases read a token's position off its layer's cache length."""
    cfg = _median_thresholds(adapter, batch, "freeze", kv_fill=kv_fill)
    raw = run_model(adapter, batch, cfg, adapter.decoding(max_len=10))
    cache, steps = raw.stepper.cache, len(raw.stepper.layers)
    assert any(int(u.min()) < adapter.n_dec_layers for u in raw.stepper.layers)
    assert [cache.length(layer) for layer in range(adapter.n_dec_layers)] == [steps] * adapter.n_dec_layers
    assert cache.positions.self_k.shape[2] == steps


def test_fixed_exit_uses_exactly_the_given_layers_and_changes_the_output(adapter, batch):
    decoding = adapter.decoding(max_len=8, ignore_eos=True)
    full = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples
    early = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze", fixed_exit=(1, 2, 1)), decoding).samples
    assert {(s.enc_img_layers, s.enc_txt_layers) for s in early} == {(1, 2)}
    assert {u for s in early for u in s.dec_layers} == {1}
    assert [s.tokens for s in early] != [s.tokens for s in full]
    vision = adapter.input_flops(batch)
    assert all(vision < e.flops < f.flops for e, f in zip(early, full))


@pytest.mark.parametrize("fixed", [None, (2, 1, 1)])
def test_analytic_flops_agree_with_torch_flop_counter(adapter, batch, fixed):
    """The cost model behind flop_savings against what torch counts the engine doing, at batch 1. The ResNet
    (input_flops, counted by torch itself) is left out of both sides so that it does not hide the layers; the
    LM head is outside the cost model. What remains unmodelled is the decoder's per-step position bias
    (about 2-4% here, less at real widths)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    one = batch.select([0])
    cfg = ExitConfig(encoder_mode="freeze", fixed_exit=fixed)
    decoding = adapter.decoding(max_len=8, ignore_eos=True)
    vision = adapter.input_flops(one)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        [sample] = run_batch(adapter, one, cfg, decoding).samples
    head = 2 * adapter.model.decoder.output_projection.weight.numel() * len(sample.tokens)
    assert sample.flops - vision == pytest.approx(counter.get_total_flops() - head - vision, rel=0.05)


# --- configs and checkpoints ---------------------------------------------------------------------------------
def test_config_reads_modelscope_fields_ignores_others_and_defaults_the_rest():
    cfg = OFAConfig.from_dict({"d_model": 768, "encoder_layers": 6, "architectures": ["OFAModel"],
                               "transformers_version": "4.40.2"})
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.resnet_type) == (768, 6, 4, "resnet101")
    assert OFAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SpecError, match="use_ofasys"):
        OFAConfig.from_dict({"use_ofasys": True})


@pytest.mark.parametrize(("name", "size"), [
    ("tiny", (256, 4, 4, 4, "resnet50")), ("medium", (512, 4, 4, 8, "resnet101")),
    ("base", (768, 6, 6, 12, "resnet101")), ("large", (1024, 12, 12, 16, "resnet152")),
    ("huge", (1280, 24, 12, 16, "resnet152"))])
def test_presets_are_the_released_sizes(name, size):
    c = PRESETS[name]
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.resnet_type) == size
    assert c.encoder_ffn_dim == c.decoder_ffn_dim == 4 * c.d_model and c.normformer and c.vocab_size == 59457


def _save(model: OFAModel, folder) -> None:
    """As save_pretrained writes safetensors: each tied tensor once (under its first name), buffers included."""
    state = model.state_dict()
    for group in tied_names(model):
        for name in group[1:]:
            del state[name]
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict()))


def test_a_safetensors_folder_loads_strictly_and_computes_the_same(adapter, batch, tmp_path):
    _save(adapter.model, tmp_path / "ofa")
    loaded = OFAAdapter.from_folder(tmp_path / "ofa")
    decoding = adapter.decoding(num_beams=3, max_len=8)
    assert loaded.reference_generate(batch, decoding) == adapter.reference_generate(batch, decoding)


def test_a_folder_with_a_missing_or_unknown_tensor_names_it(adapter, tmp_path):
    from safetensors.torch import load_file

    _save(adapter.model, tmp_path / "ofa")
    weights = tmp_path / "ofa" / "model.safetensors"
    state = load_file(str(weights))
    del state["encoder.pos_q_linear.weight"]
    save_file(state, str(weights))
    with pytest.raises(SpecError, match=r"model.safetensors: no tensor encoder.pos_q_linear.weight"):
        OFAAdapter.from_folder(tmp_path / "ofa")
    state["encoder.pos_q_linear.weight"] = torch.zeros(32, 32)
    state["encoder.w_resid"] = torch.ones(32)
    save_file(state, str(weights))
    with pytest.raises(SpecError, match=r"tensor encoder.w_resid is not part of this OFA model"):
        OFAAdapter.from_folder(tmp_path / "ofa")
    (tmp_path / "ofa" / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="config.json: not an OFA config"):
        OFAAdapter.from_folder(tmp_path / "ofa")
    with pytest.raises(SpecError, match="checkpoint file not found"):
        OFAAdapter.from_folder(tmp_path / "elsewhere")


def test_random_weights_of_a_released_size_run():
    adapter = OFAAdapter.random("ofa-tiny", seed=0)
    assert adapter.image_size == 256 and adapter.n_enc_layers == 4
    batch = _batch(size=64)
    decoding = adapter.decoding(max_len=3, ignore_eos=True)
    [s] = run_batch(adapter, batch.select([0]), ExitConfig(encoder_mode="freeze"), decoding).samples
    assert len(s.tokens) == 3 and s.flops > 0
