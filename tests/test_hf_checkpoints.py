"""transformers checkpoints as they ship, built offline: a generation_config.json with its own decoding settings,
a real Gemma3Processor (tokenizer trained here with `tokenizers`), a folder holding only pytorch_model.bin, a
special-token layout the processor-less path must not trip over. No-exit output is compared with the model's
own `generate()` run with nothing but the checkpoint's own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mue_bench.errors import SpecError
from mue_bench.models.hf import florence2, t5gemma2
from mue_bench.models.hf.base import strip_after_eos
from mue_bench.models.hf.florence2 import Florence2Adapter
from mue_bench.models.hf.t5gemma2 import T5Gemma2Adapter
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch
from mue_bench.spec import Checkpoint
from tests.test_hf_adapters import _median_thresholds


def _generate(adapter, batch, **overrides) -> list[list[int]]:
    """`generate()` with the checkpoint's own generation config (plus `overrides`), start token and padding off."""
    out = adapter.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 pixel_values=batch.pixel_values, **overrides)
    return [strip_after_eos(row[1:], adapter.eos) for row in out.tolist()]


def _no_exit(adapter, batch, decoding) -> list[list[int]]:
    return [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]


# --- the checkpoint's generation config -------------------------------------------------------------
FORCED_BOS, FORCED_EOS, MAX_LENGTH = 0, 2, 9  # Florence-2's: <s> first, </s> last


def _florence2_checkpoint(folder: Path, **generation) -> Path:
    """A tiny random Florence-2 saved with a generation_config.json that also sets `generation` (written into
    the file, as a published checkpoint may hold settings transformers would no longer save)."""
    florence2.random_florence2("tiny", seed=3).save(folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | generation))
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """As Florence-2 ships: forced BOS and EOS, an n-gram ban, beams, early stopping and a max_length."""
    folder = _florence2_checkpoint(tmp_path_factory.mktemp("f2") / "ckpt", forced_bos_token_id=FORCED_BOS,
                                   forced_eos_token_id=FORCED_EOS, no_repeat_ngram_size=3, num_beams=3,
                                   early_stopping=True, max_length=MAX_LENGTH)
    saved = json.loads((folder / "generation_config.json").read_text())
    assert saved["forced_eos_token_id"] == FORCED_EOS and saved["num_beams"] == 3
    adapter = Florence2Adapter.load(Checkpoint("folder", str(folder)))
    return adapter, florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)


@pytest.mark.parametrize("beams", [None, 1])  # the checkpoint's 3 beams, or greedy set by the spec
def test_no_exit_equals_generate_with_the_checkpoints_own_config(shipped, beams):
    adapter, batch = shipped
    decoding = adapter.decoding(num_beams=beams)
    assert (decoding.num_beams, decoding.max_len) == (beams or 3, MAX_LENGTH - 1)
    assert (decoding.forced_bos, decoding.forced_eos, decoding.no_repeat_ngram) == (FORCED_BOS, (FORCED_EOS,), 3)
    expected = _generate(adapter, batch, **({} if beams is None else {"num_beams": beams}))
    assert _no_exit(adapter, batch, decoding) == expected == adapter.reference_generate(batch, decoding)
    assert all(t[0] == FORCED_BOS for t in expected)
    assert any(len(t) == MAX_LENGTH - 1 and t[-1] == FORCED_EOS for t in expected)  # forced at the last step
    for b in range(batch.input_ids.shape[0]):
        one = batch.row(b)
        assert _no_exit(adapter, one, decoding) == _generate(adapter, one, **(
            {} if beams is None else {"num_beams": beams}))


def test_what_the_spec_sets_wins_over_the_checkpoint(shipped):
    adapter, batch = shipped
    decoding = adapter.decoding(num_beams=2, max_len=5, no_repeat_ngram=0)
    assert (decoding.num_beams, decoding.max_len, decoding.no_repeat_ngram) == (2, 5, 0)
    assert decoding.forced_eos == (FORCED_EOS,)  # unset by the spec: still the checkpoint's
    expected = _generate(adapter, batch, num_beams=2, max_new_tokens=5, no_repeat_ngram_size=0)
    assert _no_exit(adapter, batch, decoding) == expected == adapter.reference_generate(batch, decoding)


def test_ignore_decodes_without_the_checkpoints_settings(shipped, tmp_path):
    adapter, batch = shipped
    ignoring = Florence2Adapter.load(Checkpoint("folder", str(adapter.model.name_or_path)),
                                     generation_config="ignore")
    decoding = ignoring.decoding()
    assert (decoding.num_beams, decoding.max_len, decoding.forced_bos, decoding.forced_eos) == (1, 16, None, ())
    ours = _no_exit(ignoring, batch, decoding)
    assert ours == ignoring.reference_generate(batch, decoding)
    fresh = florence2.random_florence2("tiny", seed=3)  # the same weights with a default generation config
    assert ours == _generate(fresh, batch, max_new_tokens=16)
    assert ours != _no_exit(adapter, batch, adapter.decoding(num_beams=1, max_len=16))


def test_min_length_and_ignore_eos_with_a_forced_eos(tmp_path):
    folder = _florence2_checkpoint(tmp_path / "ckpt", forced_eos_token_id=FORCED_EOS, min_length=6)
    adapter = Florence2Adapter.load(Checkpoint("folder", str(folder)))
    batch = florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)
    decoding = adapter.decoding(max_len=12)
    assert decoding.min_new_tokens == 5  # min_length counts the start token
    expected = _generate(adapter, batch, max_new_tokens=12)
    assert all(len(t) >= 6 for t in expected)
    assert _no_exit(adapter, batch, decoding) == expected
    flat_out = adapter.decoding(max_len=7, ignore_eos=True)  # ignore_eos drops the forced EOS too
    ours = _no_exit(adapter, batch, flat_out)
    assert [len(t) for t in ours] == [7] * 3 and not any(FORCED_EOS in t for t in ours)
    assert ours == adapter.reference_generate(batch, flat_out)


@pytest.mark.parametrize(("field", "value"), [("do_sample", True), ("repetition_penalty", 1.3),
                                              ("suppress_tokens", [5]), ("bad_words_ids", [[7]])])
def test_a_setting_the_search_cannot_reproduce_is_refused_in_one_line(tmp_path, field, value):
    folder = _florence2_checkpoint(tmp_path / "ckpt", **{field: value})
    with pytest.raises(SpecError) as err:
        Florence2Adapter.load(Checkpoint("folder", str(folder)))
    message = str(err.value)
    assert "\n" not in message and "generation_config.json" in message and field in message
    assert 'decoding.generation_config = "ignore"' in message
    ignoring = Florence2Adapter.load(Checkpoint("folder", str(folder)), generation_config="ignore")
    assert ignoring.decoding().num_beams == 1


def test_sampling_settings_without_sampling_are_accepted(tmp_path):
    folder = _florence2_checkpoint(tmp_path / "ckpt", temperature=0.7, top_p=0.9, do_sample=False)
    assert Florence2Adapter.load(Checkpoint("folder", str(folder))).decoding().num_beams == 1


def _florence2_spec(tmp_path: Path, shapes_root: Path, folder: Path, decoding: str) -> Path:
    rows = json.loads((shapes_root / "dataset_coco.json").read_text())["images"][:2]
    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": f"{r['filepath']}/{r['filename']}", "prompt": "<CAPTION>",
                                        "references": ["a shape"]}) + "\n" for r in rows))
    spec = tmp_path / "f2.toml"
    spec.write_text(f"""
[model]
family = "florence2"
checkpoint = "{folder}"
[data]
dataset = "jsonl"
annotations = "{data}"
images = "{shapes_root}"
[decoding]
{decoding}
[run]
device = "cpu"
""")
    return spec


def test_a_spec_takes_what_it_leaves_unset_from_the_checkpoint(shipped, tmp_path, shapes_root):
    from mue_bench.mue.search import DecodingConfig
    from mue_bench.run.prepare import prepare_inputs
    from mue_bench.spec import DecodingSpec, load_spec

    folder = Path(shipped[0].model.name_or_path)

    def decoding(text: str) -> tuple:
        engine, _, _ = prepare_inputs(load_spec(_florence2_spec(tmp_path, shapes_root, folder, text)),
                                      torch.device("cpu"))
        d = engine.decoding
        return d.num_beams, d.max_len, d.no_repeat_ngram, d.forced_bos, d.forced_eos

    assert decoding("") == (3, MAX_LENGTH - 1, 3, FORCED_BOS, (FORCED_EOS,))
    # the defaults, but written: they win over the checkpoint's
    assert decoding("num_beams = 1\nmax_len = 16\nno_repeat_ngram = 0") == (1, 16, 0, FORCED_BOS, (FORCED_EOS,))
    assert decoding('generation_config = "ignore"') == (1, 16, 0, None, ())
    spec_defaults, engine_defaults = DecodingSpec(), DecodingConfig(0, 0, 0)  # what "unset" falls back to
    assert [getattr(spec_defaults, f) for f in ("num_beams", "max_len", "no_repeat_ngram")] == \
        [getattr(engine_defaults, f) for f in ("num_beams", "max_len", "no_repeat_ngram")]
    with pytest.raises(SpecError, match=r"decoding.generation_config: .*'checkpoint' or 'ignore'"):
        load_spec(_florence2_spec(tmp_path, shapes_root, folder, 'generation_config = "sometimes"'))


def test_a_refused_setting_stops_the_sweep_before_any_model_work(tmp_path, shapes_root):
    from mue_bench.run.prepare import prepare_inputs
    from mue_bench.spec import load_spec

    folder = _florence2_checkpoint(tmp_path / "ckpt", repetition_penalty=1.3)
    with pytest.raises(SpecError, match="generation_config.json sets repetition_penalty = 1.3"):
        prepare_inputs(load_spec(_florence2_spec(tmp_path, shapes_root, folder, "")), torch.device("cpu"))


# --- T5Gemma 2 with its real processor ------------------------------------------------------------------
TURN = ("<start_of_turn>", "<end_of_turn>")
CORPUS = ["caption this image", "what is in the picture", "describe the shapes you see", "a red circle on a blue "
          "square", "user\nmodel\n", "is there a small green triangle"]


def gemma3_processor(adapter: T5Gemma2Adapter, image_size: int):
    """A real Gemma3Processor over a tiny tokenizer trained here: Gemma's layout (pad 0, eos 1, bos 2, unk 3,
    mask 4, turn markers), a BPE over "▁"-joined words, and the image tokens at the ids the model's config
    names; every id up to the vocabulary size is taken, unused ones as `<unusedN>` as in Gemma's own."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

    vocab_size = adapter.model.get_input_embeddings().num_embeddings
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *TURN]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous")
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=96, special_tokens=specials,
                                                             show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"])
    images = {"<start_of_image>": adapter.boi_id, "<end_of_image>": adapter.eoi_id,
              "<image_soft_token>": adapter.image_token_id}
    assert not set(images.values()) & set(vocab.values())
    vocab |= images
    taken = set(vocab.values())
    vocab |= {f"<unused{i}>": i for i in range(vocab_size) if i not in taken}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in trained["merges"]], add_bos_token=True,
                               extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                     "image_token": "<image_soft_token>"})
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in TURN], special_tokens=True)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                           image_seq_length=adapter.n_image_tokens)


@pytest.fixture(scope="module")
def t5gemma2_folder(tmp_path_factory) -> Path:
    """A tiny random T5Gemma 2 saved with its processor, as a hub checkpoint is laid out; its generation config
    names two EOS ids (eos and <end_of_turn>), as T5Gemma 2's does."""
    adapter = t5gemma2.random_t5gemma2("tiny", seed=3)
    processor = gemma3_processor(adapter, t5gemma2.SHAPES["tiny"]["vision"]["image_size"])
    adapter.model.generation_config.eos_token_id = [adapter.eos_id, processor.tokenizer.convert_tokens_to_ids(TURN[1])]
    folder = tmp_path_factory.mktemp("t5g2") / "ckpt"
    adapter.model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


PROMPTS = ["caption", "what is in the picture ? describe the shapes you see", "a red circle on a blue square"]


def _jsonl_spec(tmp_path: Path, shapes_root: Path, folder: Path, batch_size: int, grid: str) -> Path:
    rows = json.loads((shapes_root / "dataset_coco.json").read_text())["images"][:3]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": r["cocoid"], "image": f"{r['filepath']}/{r['filename']}", "prompt": p,
                                        "references": [s["raw"] for s in r["sentences"]]}) + "\n"
                            for r, p in zip(rows, PROMPTS)))
    spec = tmp_path / f"t5g2-b{batch_size}.toml"
    spec.write_text(f"""
[model]
family = "t5gemma2"
checkpoint = "{folder}"
[data]
dataset = "jsonl"
annotations = "{data}"
images = "{shapes_root}"
[decoding]
max_len = 8
[grid]
{grid}
[run]
batch_size = {batch_size}
device = "cpu"
[timing]
warmup = 0
reference_repeats = 1
[output]
dir = "{tmp_path / f'results-b{batch_size}'}"
""")
    return spec


def test_t5gemma2_with_its_processor_sweeps_at_batch_three(tmp_path, shapes_root, t5gemma2_folder):
    """Three prompts of different lengths, right-padded into one batch by the real processor: without exits
    each sample is what generate() gives it alone; with exits, batch 3 gives what batch 1 gives."""
    from mue_bench.run.prepare import prepare_inputs
    from mue_bench.run.runner import Progress, SweepOptions, run_sweep
    from mue_bench.spec import load_spec

    spec = load_spec(_jsonl_spec(tmp_path, shapes_root, t5gemma2_folder, 3, ""))
    engine, samples, [batch] = prepare_inputs(spec, torch.device("cpu"))
    adapter = engine.adapter
    assert adapter.processor is not None and len(adapter.eos) == 2
    lengths = batch.attention_mask.sum(1).tolist()
    assert len(set(lengths)) == 3 and batch.attention_mask[:, 0].all()  # padded on the right
    assert (batch.input_ids == adapter.boi_id).sum(1).tolist() == [1, 1, 1]
    assert ((batch.input_ids == adapter.image_token_id).sum(1) == adapter.n_image_tokens).all()
    ours = _no_exit(adapter, batch, engine.decoding)
    assert ours == _generate(adapter, batch, max_new_tokens=8)
    for b, s in enumerate(samples):
        assert [ours[b]] == _generate(adapter, adapter.prepare([s]), max_new_tokens=8)

    cfg = _median_thresholds(adapter, batch, "freeze")
    grid = f"tau_img = [{cfg.tau_img!r}]\ntau_txt = [{cfg.tau_txt!r}]\ntau_dec = [{cfg.tau_dec!r}]"
    rows = {}
    for size in (3, 1):
        outcome = run_sweep(load_spec(_jsonl_spec(tmp_path, shapes_root, t5gemma2_folder, size, grid)),
                            SweepOptions(meteor=False), Progress())
        rows[size] = outcome.samples.set_index(["point_id", "sample_id"]).sort_index()
    def plain(v):
        return tuple(int(x) for x in v) if hasattr(v, "__len__") else int(v)

    columns = ["tokens", "enc_img_layers", "enc_txt_layers", "dec_layers"]
    together, alone = (rows[size][columns].map(plain) for size in (3, 1))
    assert together.to_dict() == alone.to_dict()
    assert [list(together.loc[("full-freeze", s.sample_id), "tokens"]) for s in samples] == ours
    exited = together.drop(index="full-freeze", level=0)
    assert (exited["enc_img_layers"] < adapter.n_enc_layers).any()
    assert any(min(d) < adapter.n_dec_layers for d in exited["dec_layers"])


# --- the processor-less path -------------------------------------------------------------------------
def test_hashed_prompts_avoid_special_ids_wherever_they_sit(shapes_root):
    """A processor-less T5Gemma 2 whose image tokens have the lowest ids: words still hash into ordinary ids
    (this once divided by boi - 4), and the engine still reproduces generate()."""
    from transformers import T5Gemma2ForConditionalGeneration

    from mue_bench.data.loaders import load_karpathy

    cfg = t5gemma2.t5gemma2_config("tiny")
    cfg.encoder.boi_token_index, cfg.encoder.eoi_token_index, cfg.encoder.image_token_index = 3, 4, 5
    cfg.image_token_index = 5
    torch.manual_seed(0)
    adapter = T5Gemma2Adapter(T5Gemma2ForConditionalGeneration(cfg))
    adapter.image_size = t5gemma2.SHAPES["tiny"]["vision"]["image_size"]
    assert (adapter.boi_id, adapter.eoi_id, adapter.image_token_id) == (3, 4, 5)
    words = adapter.hash_words(" ".join(f"w{i}" for i in range(300)))
    assert not set(words) & {0, 1, 2, 3, 4, 5} and max(words) < cfg.decoder.vocab_size
    assert len(set(words)) > 100  # spread over the vocabulary
    samples = load_karpathy(shapes_root / "dataset_coco.json", shapes_root, "test")[:2]
    batch = adapter.prepare(samples)
    assert ((batch.input_ids == 5).sum(1) == adapter.n_image_tokens).all()
    assert ((batch.input_ids == 3).sum(1) == 1).all()
    decoding = adapter.decoding(max_len=6)
    assert _no_exit(adapter, batch, decoding) == adapter.reference_generate(batch, decoding)


# --- weights as pytorch_model.bin ------------------------------------------------------------------------
def _bin_only(folder: Path) -> Path:
    adapter = florence2.random_florence2("tiny", seed=1)
    adapter.save(folder)
    torch.save(adapter.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_folder_with_only_pytorch_model_bin_loads(tmp_path):
    """transformers 5 reads pytorch_model.bin (with torch >= 2.6): nothing to convert."""
    folder = _bin_only(tmp_path / "ckpt")
    loaded = Florence2Adapter.load(Checkpoint("folder", str(folder)))
    reference = florence2.random_florence2("tiny", seed=1).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.model.state_dict().items())


def test_a_refused_pytorch_model_bin_says_how_to_convert_it(tmp_path, monkeypatch):
    """Where transformers refuses torch.load (torch < 2.6), the one line says how to convert to safetensors."""
    import transformers.modeling_utils

    def refuse():
        raise ValueError("Due to a serious vulnerability issue in `torch.load` ... upgrade torch to at least v2.6")

    monkeypatch.setattr(transformers.modeling_utils, "check_torch_load_is_safe", refuse)
    folder = _bin_only(tmp_path / "ckpt")
    with pytest.raises(SpecError) as err:
        Florence2Adapter.load(Checkpoint("folder", str(folder)))
    message = str(err.value)
    assert "\n" not in message and "vulnerability" in message
    assert "Florence2ForConditionalGeneration" in message and "safe_serialization=True" in message
