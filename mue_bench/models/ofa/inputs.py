"""OFA's inputs for image captioning and SNLI-VE, built as the authors' fairseq tasks build them, so an OFA
checkpoint sees at evaluation exactly what it was fine-tuned on. Each detail cites its source: OFA-Sys/OFA
(the MuE authors' fork, Tangshengku/OFA, has identical data and task files) and ModelScope's preprocessors
where they differ.

Source text: <s> + BPE(prompt) + </s>, no token truncation (data/mm_data/caption_dataset.py:136-139,
snli_ve_dataset.py:151-159); batches are right-padded with <pad> (fairseq data_utils.collate_tokens,
left_pad=False, as both datasets' collate call it). Images: RGB, resized to patch_image_size x
patch_image_size with bicubic interpolation, to [0, 1], normalised with mean = std = 0.5 unless the task set
imagenet_default_mean_and_std (caption_dataset.py:102-114, snli_ve_dataset.py:121-133).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import torch
from PIL import Image

from mue_bench.models.ofa.tokenizer import BOS, EOS, PAD
from mue_bench.spec import OFA_ANSWERS

PATCH_IMAGE_SIZE = 480  # run_scripts/caption/*_base*.sh and snli_ve/*_base*.sh: patch_image_size=480
MAX_SRC_LENGTH = 80  # the same scripts: max_src_length=80 (SNLI-VE: words kept per sentence)
MAX_TGT_LENGTH = 20  # the same scripts: max_tgt_length=20
MEAN = STD = (0.5, 0.5, 0.5)  # caption_dataset.py:106-107
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # caption_dataset.py:29-30

# caption_dataset.py:117 (GPT2BPE); ModelScope image_captioning.py:94 has the same default.
CAPTION_PROMPT = " what does the image describe?"
# snli_ve_dataset.py:151; ModelScope visual_entailment.py:144.
ENTAILMENT_PROMPT = ' does the image describe " {} "?'
# snli_ve_dataset.py:157, with --add-caption (the MuE SNLI-VE base run: train_snli_ve_base_MuE.sh), the
# premise first; ModelScope visual_entailment.py:153.
ENTAILMENT_PREMISE_PROMPT = ' can image and text1 " {} " imply text2 " {} "?'
# SNLI-VE's answers (spec.OFA_ANSWERS, snli_ve.py:28); each is scored as BPE(" " + answer) + </s>
# (snli_ve.py:82-89), and SNLI-VE's gold labels map onto them (snli_ve_dataset.py:137-142).
ANSWERS = OFA_ANSWERS
LABEL_TO_ANSWER = {"contradiction": "no", "entailment": "yes", "neutral": "maybe"}
# Caption decoding of the MuE evaluation (run_scripts/caption/evaluate_caption_base_MuE.sh): beam 5,
# max_len_b 16, no_repeat_ngram_size 3; SNLI-VE ranks the answers instead of generating.
CAPTION_DECODING = {"beam": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}


def pre_caption(text: str, max_words: int | None = None) -> str:
    """OFA's text cleaning (data/ofa_dataset.py:68-84): lowercase, leading punctuation off, '-' and '/' to
    spaces, <person> to person, runs of whitespace to one space, trimmed, at most `max_words` words."""
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def clean_caption(text: str) -> str:
    """A generated caption as OFA scores it: punctuation removed, trimmed (utils/eval_utils.py:53-54)."""
    return text.translate(str.maketrans({c: None for c in string.punctuation})).strip()


def caption_text() -> str:
    return CAPTION_PROMPT


def entailment_text(hypothesis: str, premise: str | None = None, max_words: int = MAX_SRC_LENGTH) -> str:
    """The SNLI-VE source text: the hypothesis question, or with a premise (--add-caption) the implication
    question; both sentences cleaned and cut to `max_words` words (snli_ve_dataset.py:150-157)."""
    hypothesis = pre_caption(hypothesis, max_words)
    if premise is None:
        return ENTAILMENT_PROMPT.format(hypothesis)
    return ENTAILMENT_PREMISE_PROMPT.format(pre_caption(premise, max_words), hypothesis)


def encode(tokenizer, text: str) -> list[int]:
    """BPE ids of `text`, no specials (OFADataset.encode_text, data/ofa_dataset.py:36-48)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def source_ids(tokenizer, text: str) -> list[int]:
    return [BOS, *encode(tokenizer, text), EOS]


def decoder_prompt(source: list[int], prompt_type: str = "none") -> list[int]:
    """What the decoder is fed before the answer (snli_ve_dataset.py:160-171): <s> alone ("none", the
    caption task's and the default), or the source without its </s> ("prev_output", the MuE SNLI-VE run)."""
    if prompt_type == "none":
        return [BOS]
    if prompt_type == "prev_output":
        return source[:-1]
    if prompt_type == "src":
        return list(source)
    raise ValueError(f"prompt_type must be none, src or prev_output, got {prompt_type!r}")


def teacher_forcing(prompts: list[list[int]], answers: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input, target), [B, T] each, for learning `answers` (without </s>) after the decoder prompts, as
    OFA's datasets build them (snli_ve_dataset.py:160-171; caption_dataset.py:128-131 is the <s> prompt): input
    prompt + answer, target the input shifted left with </s> appended, and <pad> on every position before the one
    that predicts the answer's first token (`target_item[:-len(tgt_item)-1] = pad`), so the prompt carries no
    loss. Rows right-padded with <pad>, which carries none either."""
    inputs = [[*p, *a] for p, a in zip(prompts, answers)]
    targets = [[PAD] * (len(p) - 1) + [*a, EOS] for p, a in zip(prompts, answers)]
    width = max(len(r) for r in inputs)
    return (torch.tensor([r + [PAD] * (width - len(r)) for r in inputs], dtype=torch.long),
            torch.tensor([r + [PAD] * (width - len(r)) for r in targets], dtype=torch.long))


@dataclass(frozen=True)
class AnswerSet:
    """SNLI-VE's candidates and the decoding constraint: after the decoder prompt, the first answer token
    must be one of `first_tokens`, and each answer continues only along its own tokens and then </s> (the
    trie of snli_ve.py:80-98). Scoring (eval_snli_ve, utils/eval_utils.py:206): with logits outside the
    allowed set at -inf, each answer's score is the sum of log-probs of its tokens and </s>; the argmax wins."""

    answers: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]  # BPE(" " + answer), without </s>

    @property
    def first_tokens(self) -> frozenset[int]:
        return frozenset(t[0] for t in self.tokens)

    def allowed_after(self, prefix: tuple[int, ...]) -> frozenset[int]:
        """Token ids the constraint allows after `prefix` answer tokens."""
        allowed = {t[len(prefix)] if len(t) > len(prefix) else EOS for t in self.tokens if t[:len(prefix)] == prefix}
        return frozenset(allowed)


def answer_set(tokenizer, answers: tuple[str, ...] = ANSWERS) -> AnswerSet:
    return AnswerSet(answers, tuple(tuple(encode(tokenizer, " " + a)) for a in answers))


def preprocess_image(image: Image.Image, size: int = PATCH_IMAGE_SIZE, imagenet: bool = False) -> torch.Tensor:
    """[3, size, size] float32: RGB, bicubic resize to size x size (torchvision's Resize on a PIL image is PIL's
    own bicubic resize), scaled to [0, 1], normalised (x - mean) / std, so [-1, 1] with OFA's 0.5s."""
    rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3)
    x = x.permute(2, 0, 1).float() / 255.0
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (MEAN, STD)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def collate(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, S] right-padded with <pad>, lengths [B]), as fairseq's collate_tokens pads OFA's sources."""
    width = max(len(s) for s in sources)
    ids = torch.full((len(sources), width), PAD, dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sources], dtype=torch.long)
