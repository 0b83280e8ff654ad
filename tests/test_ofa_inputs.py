"""OFA's tokenizer and task inputs: added tokens at OFA's ids, the tasks' prompts byte for byte, images as the
tasks preprocess them. The BPE is a tiny one trained here offline; nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import ByteLevelBPETokenizer

from mue_bench.errors import SpecError
from mue_bench.models.ofa import inputs
from mue_bench.models.ofa.tokenizer import BIN_TOKENS, CODE_TOKENS, ENGLISH_VOCAB, added_tokens, load_tokenizer

TEXT = ["a man riding a horse on the beach", "what does the image describe?", "does the image describe",
        "can image and text1 imply text2", "yes no maybe", "two dogs play in the snow"]


def train_bpe(folder, texts: list[str] = TEXT, vocab_size: int = 320):
    """A tiny GPT-2-style byte-level BPE with OFA's four specials first (and <mask>), trained offline."""
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts * 10, vocab_size=vocab_size, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(folder))
    return folder


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return train_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return load_tokenizer(bpe_dir)


def test_added_tokens_follow_the_bpe_vocabulary_codes_then_bins(tok, bpe_dir):
    base = len(json.loads((bpe_dir / "vocab.json").read_text()))
    assert tok.convert_tokens_to_ids(["<code_0>", "<code_8191>"]) == [base, base + CODE_TOKENS - 1]
    assert tok.convert_tokens_to_ids(["<bin_0>", "<bin_999>"]) == [base + CODE_TOKENS, base + CODE_TOKENS + 999]
    assert len(tok) == base + CODE_TOKENS + BIN_TOKENS
    assert 50265 + CODE_TOKENS + BIN_TOKENS == ENGLISH_VOCAB == 59457  # BART's vocab.json + OFA's tokens
    assert added_tokens()[:2] == ["<code_0>", "<code_1>"] and added_tokens()[-1] == "<bin_999>"


def test_special_ids_are_fairseqs(tok):
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]


def test_specials_elsewhere_are_refused(tmp_path):
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXT, vocab_size=280, min_frequency=1, show_progress=False,
                            special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.save_model(str(tmp_path))
    with pytest.raises(SpecError, match=r"vocab\.json: <s> has id 1, OFA's is 0"):
        load_tokenizer(tmp_path)


def test_missing_merges_names_the_file(tmp_path, bpe_dir):
    (tmp_path / "vocab.json").write_bytes((bpe_dir / "vocab.json").read_bytes())
    with pytest.raises(SpecError, match=r"merges\.txt"):
        load_tokenizer(tmp_path)


def test_prompts_are_the_tasks_strings():
    assert inputs.caption_text().encode() == b" what does the image describe?"
    assert inputs.entailment_text("A dog runs.").encode() == b' does the image describe " a dog runs. "?'
    assert inputs.entailment_text("Two-dogs  play", premise="A man/woman.").encode() == (
        b' can image and text1 " a man woman. " imply text2 " two dogs play "?')
    assert inputs.ANSWERS == ("no", "yes", "maybe")


def test_pre_caption_cleans_and_cuts_words_like_ofa():
    assert inputs.pre_caption(",.A  <person> on a sky-blue\n", None) == "a person on a sky blue"
    assert inputs.pre_caption("one two three four", 2) == "one two"
    assert inputs.entailment_text(" ".join(["w"] * 100)).count("w") == inputs.MAX_SRC_LENGTH
    assert inputs.clean_caption(" a dog, running! ") == "a dog running"


def test_source_ids_have_bos_and_eos_and_no_truncation(tok):
    ids = inputs.source_ids(tok, inputs.caption_text())
    assert ids[0] == 0 and ids[-1] == 2 and 0 not in ids[1:-1] and 2 not in ids[1:-1]
    assert tok.decode(ids[1:-1]) == " what does the image describe?"
    long = inputs.source_ids(tok, " a" * 200)
    assert len(long) == 202


def test_decoder_prompts_and_answer_constraint(tok):
    src = inputs.source_ids(tok, inputs.entailment_text("a dog", premise="a dog runs"))
    assert inputs.decoder_prompt(src) == [0]
    assert inputs.decoder_prompt(src, "prev_output") == src[:-1]
    answers = inputs.answer_set(tok)
    assert [tok.decode(t) for t in answers.tokens] == [" no", " yes", " maybe"]
    assert answers.allowed_after(()) == answers.first_tokens
    for t in answers.tokens:
        assert answers.allowed_after(t) == frozenset({2})  # each answer ends with </s>


def test_collate_pads_on_the_right():
    ids, lengths = inputs.collate([[0, 5, 2], [0, 5, 6, 7, 2]])
    assert ids.tolist() == [[0, 5, 2, 1, 1], [0, 5, 6, 7, 2]] and lengths.tolist() == [3, 5]


def test_image_preprocessing_shape_range_and_values():
    img = Image.new("RGB", (64, 32), (255, 0, 128))
    x = inputs.preprocess_image(img, size=48)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert torch.allclose(x[:, 10, 10], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)
    gray = Image.effect_noise((50, 70), 80).convert("L")  # a non-RGB mode becomes RGB first
    y = inputs.preprocess_image(gray, size=inputs.PATCH_IMAGE_SIZE)
    assert y.shape == (3, 480, 480) and y.min() >= -1 and y.max() <= 1
    expected = torch.from_numpy(np.array(gray.convert("RGB").resize((480, 480), Image.BICUBIC))).float()
    assert torch.allclose(y.permute(1, 2, 0), expected / 127.5 - 1, atol=1e-5)
