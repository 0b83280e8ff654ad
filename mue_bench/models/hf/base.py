"""What the adapters of transformers' encoder-decoder VLMs (Florence-2, T5Gemma 2) share.

Both take `input_ids` with image placeholder tokens, an attention mask and `pixel_values`; both are loaded
with `from_pretrained` and `AutoProcessor`, compared against their own `generate()`, and have a vision
tower that runs in full at every grid point. Only the layer-by-layer calls differ, in each family's module.
Random-weight models (`checkpoint = "random:<shape>"`) have no processor: their words map to ids by hash
and their images are resized and normalised here, which is enough for speed measurements.
Decoding follows the checkpoint's own generation config (generation.py) unless the spec sets a value or
asks to ignore it, and `reference_generate` runs `generate()` with exactly that config.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mue_bench.data.loaders import Sample, open_image
from mue_bench.errors import MueBenchError, SpecError
from mue_bench.models.hf import generation
from mue_bench.mue.adapter import ExitAdapter
from mue_bench.mue.cost import counted_flops
from mue_bench.mue.search import DecodingConfig
from mue_bench.spec import Checkpoint

MUE_BENCH_JSON = "mue_bench.json"  # saved with processor-less (random) models: how to build their inputs


def cache_kwarg(fn: Callable, cache: object) -> dict[str, object]:
    """`fn`'s KV-cache keyword argument (of a mask builder or a layer's forward), by the name the installed
    transformers takes: `cache` from 5.24, where `past_key_values` is deprecated (gone in 5.40)."""
    return {_cache_name(fn): cache}


@functools.cache
def _cache_name(fn: Callable) -> str:  # once per function: signatures are slow next to a layer call
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


@dataclass
class HFBatch:
    input_ids: torch.Tensor  # [B, S] with the image placeholders, right-padded
    attention_mask: torch.Tensor  # [B, S]
    pixel_values: torch.Tensor  # [B, 3, H, W]

    def to(self, device: torch.device) -> HFBatch:
        return HFBatch(self.input_ids.to(device), self.attention_mask.to(device), self.pixel_values.to(device))

    def row(self, b: int) -> HFBatch:
        """Sample b alone, without padding."""
        n = int(self.attention_mask[b].sum())
        return HFBatch(self.input_ids[b:b + 1, :n], self.attention_mask[b:b + 1, :n], self.pixel_values[b:b + 1])


def load_rgb(samples: list[Sample]) -> list:
    images = []
    for s in samples:
        with open_image(s.image) as im:
            images.append(im.convert("RGB"))
    return images


def strip_after_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def task_prompt(sample: Sample, caption: str) -> str:
    """A sample's own prompt, else the family's caption request, else the hypothesis asked as a question
    (neither model has an entailment task token: fine-tune for it)."""
    if sample.prompt:
        return sample.prompt
    if sample.task == "caption":
        return caption
    return f"Does the image describe \" {sample.hypothesis} \"? Answer yes, no or maybe."


def eos_ids(value: int | list[int] | None, fallback: int | list[int]) -> tuple[int, ...]:
    """A generation config's eos_token_id (an int or a list) as a tuple, the first one primary."""
    v = value if value is not None else fallback
    return (v,) if isinstance(v, int) else tuple(v)


def token_ids(*values: int | list[int] | None) -> set[int]:
    """The ids named by config fields, each an id, a list of ids or None."""
    out: set[int] = set()
    for v in values:
        if v is not None:
            out |= {v} if isinstance(v, int) else set(v)
    return out


class HFAdapterBase(ExitAdapter):
    """Loading, inputs, decoding settings and the reference `generate()`; subclasses drive the layers."""

    family: str
    native_encoder_mode = "freeze"  # the pretrained encoders are joint
    model_class: str  # the transformers class name
    shapes: dict[str, dict]  # "random:<shape>" entries

    bos_id: int
    eos_id: int
    pad_id: int
    eos: tuple[int, ...]

    def __init__(self, model, processor=None, generation_config: str = "checkpoint"):
        """`generation_config`: "checkpoint" decodes with the settings the model's generation config provides
        (refusing any the engine cannot reproduce), "ignore" with transformers' defaults."""
        self.model, self.processor = model.eval(), processor
        self.generation_mode = generation_config
        if generation_config == "checkpoint":
            name = model.name_or_path
            generation.check(model.generation_config, f"model.checkpoint {name!r}" if name else "model.checkpoint")
            self._generation = generation.settings(model.generation_config)
        else:
            self._generation = {}
        self.image_size: int | None = None  # set for processor-less (random) models
        self._input_flops: dict[tuple, float] = {}
        self._memo: dict[tuple, tuple[torch.Tensor, object]] = {}

    def _memoised(self, key: tuple, anchor: torch.Tensor, build: Callable[[], object]):
        """Masks and rotary tables depend only on a batch's layout (its padding mask, its positions): build
        each once per batch, rebuilt when `anchor` is another tensor."""
        cached = self._memo.get(key)
        if cached is None or cached[0] is not anchor:
            self._memo[key] = (anchor, build())
        return self._memo[key][1]

    @classmethod
    def random(cls, shape: str, attn_implementation: str = "sdpa") -> HFAdapterBase:
        raise NotImplementedError

    @classmethod
    def load(cls, checkpoint: Checkpoint, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
             generation_config: str = "checkpoint") -> HFAdapterBase:
        """A hub id or a local folder in transformers' format, or random weights of a named shape."""
        import transformers
        from transformers import AutoProcessor

        if checkpoint.kind == "random":
            return cls.random(checkpoint.ref, attn_implementation=attn_implementation)
        ref = checkpoint.ref
        local_inputs = Path(ref) / MUE_BENCH_JSON
        try:
            model = getattr(transformers, cls.model_class).from_pretrained(
                ref, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)
            processor = None if local_inputs.is_file() else AutoProcessor.from_pretrained(
                ref, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise SpecError(f"model.checkpoint {ref!r}: cannot load {cls.model_class} "
                            f"({str(e).splitlines()[0]}){cls._conversion_hint(checkpoint)}") from None
        adapter = cls(model, processor, generation_config=generation_config)
        if local_inputs.is_file():
            adapter.image_size = int(json.loads(local_inputs.read_text())["image_size"])
        return adapter

    @classmethod
    def _conversion_hint(cls, checkpoint: Checkpoint) -> str:
        """For a folder holding only pytorch_model.bin (which transformers reads only with torch >= 2.6): how to
        convert it once to safetensors."""
        folder = checkpoint.path
        if folder is None or not (folder / "pytorch_model.bin").is_file() or any(folder.glob("*.safetensors")):
            return ""
        return (f"; it holds only pytorch_model.bin: convert it once, with torch >= 2.6, by python -c \"from "
                f"transformers import {cls.model_class} as M; M.from_pretrained('{folder}').save_pretrained("
                f"'{folder}-safetensors', safe_serialization=True)\" and copy the processor files across")

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        if self.processor is not None:
            self.processor.save_pretrained(out)
        else:
            (out / MUE_BENCH_JSON).write_text(json.dumps({"image_size": self.image_size}))

    # --- inputs -----------------------------------------------------------------------------------
    def prepare(self, samples: list[Sample]) -> HFBatch:
        images = load_rgb(samples)
        if self.processor is None:
            return self._prepare_without_processor(images, samples)
        # one list of images per prompt (a flat list is one prompt's images to Gemma 3's processor); padded on
        # the right whatever the tokenizer's default, so that a sample's positions do not depend on its batch
        enc = self.processor(text=[self.prompt_text(s) for s in samples], images=[[im] for im in images],
                             return_tensors="pt", padding=True, padding_side="right")
        return HFBatch(enc["input_ids"], enc["attention_mask"], enc["pixel_values"])

    def prompt_text(self, sample: Sample) -> str:
        """The processor's text input for a sample."""
        raise NotImplementedError

    def _prepare_without_processor(self, images: list, samples: list[Sample]) -> HFBatch:
        import numpy as np

        if self.image_size is None:
            raise MueBenchError(f"this {self.model_class} has no processor; load it with {type(self).__name__}.load")
        size = self.image_size
        pixels = torch.stack([torch.from_numpy(np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0)
                              .permute(2, 0, 1) for im in images])
        pixels = (pixels - 0.5) / self.pixel_std
        return self.pack([self.hash_prompt_ids(s) for s in samples], pixels)

    pixel_std = 0.5

    def hash_prompt_ids(self, sample: Sample) -> list[int]:
        """A processor-less model's prompt ids, image placeholders included."""
        raise NotImplementedError

    def pack(self, rows: list[list[int]], pixels: torch.Tensor) -> HFBatch:
        """Right-pad prompt id rows into a batch."""
        input_ids = self.pad_rows(rows)
        mask = (torch.arange(input_ids.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]).long()
        return HFBatch(input_ids, mask, pixels)

    def special_ids(self) -> set[int]:
        """Ids a hashed word must never take: special tokens, image placeholders and the like."""
        return token_ids(self.bos_id, self.pad_id, list(self.eos), self._generation.get("forced_bos"))

    def hash_words(self, text: str) -> list[int]:
        """Each word an id by hash, among the vocabulary's ids that are not special (wherever those sit)."""
        vocab = self.model.get_input_embeddings().num_embeddings
        avoid = sorted(i for i in self.special_ids() if 0 <= i < vocab)
        if len(avoid) >= vocab:
            raise MueBenchError(f"this {self.model_class}'s vocabulary has only special tokens")
        ids = []
        for w in text.split():
            i = zlib.crc32(w.encode()) % (vocab - len(avoid))  # the i-th id not in `avoid`
            for a in avoid:
                if a > i:
                    break
                i += 1
            ids.append(i)
        return ids

    def text(self, ids: list[int]) -> str:
        if self.processor is None:
            return " ".join(f"t{i}" for i in ids if i not in self.eos)
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def target_ids(self, texts: list[str], max_len: int) -> torch.Tensor:
        """Training targets [B, T]: what the decoder should emit after its start token, ending in EOS,
        right-padded with the pad id."""
        raise NotImplementedError

    def teacher_forced(self, batch: HFBatch, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every decoder layer's output under teacher forcing and the targets the loss reads: the labels, as the
        decoder starts from its start token alone."""
        return self.decoder_states(batch, labels), labels

    def pad_rows(self, rows: list[list[int]]) -> torch.Tensor:
        """[B, max len] ids, right-padded with the pad id."""
        out = torch.full((len(rows), max(map(len, rows))), self.pad_id)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    # --- decoding -----------------------------------------------------------------------------------
    def decoding(self, num_beams: int | None = None, max_len: int | None = None, no_repeat_ngram: int | None = None,
                 ignore_eos: bool = False) -> DecodingConfig:
        """The engine's search settings: what is given here (the spec's explicit values), else what the
        checkpoint's generation config provides, else DecodingConfig's defaults (the spec's defaults)."""
        given = {k: v for k, v in (("num_beams", num_beams), ("max_len", max_len),
                                   ("no_repeat_ngram", no_repeat_ngram)) if v is not None}
        return DecodingConfig(self.bos_id, self.eos_id, self.pad_id, **(self._generation | given),
                              ignore_eos=ignore_eos, beam_style="hf", extra_eos=self.eos[1:])

    def reference_generate(self, batch: HFBatch, decoding: DecodingConfig) -> list[list[int]]:
        """The model's own `generate()`, without the start token and padding: with the checkpoint's generation
        config (a default one under "ignore"), overridden by what the spec controls (beams, length, n-gram ban,
        ignore_eos); every other setting comes from the checkpoint itself, not from `decoding`."""
        from transformers import GenerationConfig

        base = self.model.generation_config
        gen = copy.deepcopy(base) if self.generation_mode == "checkpoint" else GenerationConfig()
        gen.update(decoder_start_token_id=self.bos_id, bos_token_id=base.bos_token_id,
                   eos_token_id=list(self.eos) if len(self.eos) > 1 else self.eos_id, pad_token_id=self.pad_id,
                   do_sample=False, num_beams=decoding.num_beams, max_length=None, max_new_tokens=decoding.max_len,
                   no_repeat_ngram_size=decoding.no_repeat_ngram)
        if decoding.ignore_eos:
            gen.update(min_length=None, min_new_tokens=decoding.max_len, forced_eos_token_id=None)
        # generate() fills a passed config's unset fields from model.generation_config: point that at `gen`
        # too, so that what "ignore" (or ignore_eos) leaves unset stays unset
        self.model.generation_config = gen
        try:
            out = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      pixel_values=batch.pixel_values, generation_config=gen)
        finally:
            self.model.generation_config = base
        return [strip_after_eos(row[1:], self.eos) for row in out.tolist()]

    # --- costs --------------------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower and projector: [B, n_image_tokens, D]."""
        return self.model.get_image_features(pixels).pooler_output

    def input_flops(self, batch: HFBatch) -> float:
        """FLOPs per sample of the vision tower and projector, which run in full at every grid point.
        Counted once per image shape with torch's FlopCounterMode (outside any timed region)."""
        shape = tuple(batch.pixel_values.shape[1:])
        if shape not in self._input_flops:
            self._input_flops[shape] = counted_flops(lambda: self.image_features(batch.pixel_values[:1]))
        return self._input_flops[shape]


def heads_view(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[R, N, D] -> [R, H, N, Dh], the layout of transformers' caches."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)
