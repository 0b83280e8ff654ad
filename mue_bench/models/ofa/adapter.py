"""The exit engine's view of OFA (see mue/adapter.py for the contract).

OFA's encoder is joint: [image patches; prompt tokens] attend to each other, so its native encoder mode is
`freeze`. In `split` mode each stream attends within itself, with the position biases of its own positions
(the image block or the text block of the joint bias), which is the authors' separate-stream MuE encoder.
Position biases depend on the batch's shape only (model.py), so they are built once per batch in
`embed_streams` (encoder) and `decoder_cache` (decoder) and every layer call is a pure function of its rows.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mue_bench.data.loaders import Sample, open_image
from mue_bench.errors import SpecError
from mue_bench.models.ofa.checkpoint import TASK_FILE
from mue_bench.models.ofa.config import IMAGE_SIZES, OFAConfig, preset
from mue_bench.models.ofa.inputs import (
    MAX_SRC_LENGTH,
    PATCH_IMAGE_SIZE,
    caption_text,
    decoder_prompt,
    encode,
    entailment_text,
    pre_caption,
    preprocess_image,
    teacher_forcing,
)
from mue_bench.models.ofa.model import (
    DecoderPositions,
    EncoderPositions,
    OFAModel,
    additive_mask,
    load_weights,
    tied_names,
)
from mue_bench.models.ofa.tokenizer import HF_FILES, load_tokenizer, tokenizer_files
from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.cache import KV, TensorKVCache
from mue_bench.mue.cost import LayerDims, counted_flops
from mue_bench.mue.search import DecodingConfig
from mue_bench.spec import Checkpoint

N_SPECIAL = 4  # <s>, <pad>, </s>, <unk>


@dataclass
class OFABatch:
    """Pre-processed inputs: images [B, 3, H, W] (normalised as the checkpoint expects), prompt ids [B, T]
    right-padded with the pad id, mask [B, T] True on real tokens."""

    images: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> OFABatch:
        return OFABatch(self.images.to(device), self.ids.to(device), self.mask.to(device))

    def select(self, rows: list[int]) -> OFABatch:
        """These samples, with the padding columns none of them needs dropped."""
        mask = self.mask[rows]
        width = int(mask.sum(1).max())
        return OFABatch(self.images[rows], self.ids[rows, :width], mask[:, :width])


def collate(images: list[torch.Tensor], ids: list[list[int]], pad_id: int) -> OFABatch:
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, x in enumerate(ids):
        out[i, : len(x)], mask[i, : len(x)] = torch.tensor(x, dtype=torch.long), True
    return OFABatch(torch.stack(images), out, mask)


class OFACache(TensorKVCache):
    """The plain-tensor KV cache plus the batch's decoder position biases (shared by all rows)."""

    def __init__(self, n_layers: int, cross_kv, positions: DecoderPositions):
        super().__init__(n_layers, cross_kv)
        self.positions = positions


@dataclass
class OFASequence:
    """One ranking pass's shared state (`OFAAdapter.sequence_context`): the decoder's position biases over the
    pass's T positions (per layer the causal self bias [1, H, T, T], the cross bias [1, H, T, N]), the encoder
    output per batch sample, and each layer's cross-attention K/V per sample, projected when the layer is first
    reached (a sample's candidates share it)."""

    self_biases: list[torch.Tensor]
    cross_bias: torch.Tensor
    enc_out: torch.Tensor  # [B, N, D]
    enc_mask: torch.Tensor  # [B, N]
    cross: dict[int, KV]


class OFAAdapter(ExitAdapter):
    family = "ofa"
    native_encoder_mode = "freeze"
    row_subsets = True  # position biases are batch-independent and masks per row: layers are pure in their rows
    full_sequence = True  # a ranking pass: the teacher-forced decoder of OFAModel.decoder_states, layer by layer

    def __init__(self, model: OFAModel, tokenizer=None):
        self.model, self.tokenizer = model.eval(), tokenizer
        cfg = model.cfg
        self.n_enc_layers, self.n_dec_layers = cfg.encoder_layers, cfg.decoder_layers
        self.bos_id, self.eos_id, self.pad_id = cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id
        # The cost model has one FFN width; every released size has encoder_ffn_dim == decoder_ffn_dim.
        self.dims = LayerDims(cfg.d_model, cfg.encoder_ffn_dim, cfg.d_model, vocab=cfg.vocab_size)
        self._positions: EncoderPositions | None = None  # of the batch embed_streams saw last
        # every width's, for a decoder run on a kept encoder result after other batches were embedded (grid reuse)
        self._positions_by_width: dict[int, EncoderPositions] = {}
        self._step = 0  # the decoding step decoder_embed saw last: the position of this step's token
        # False: the image stream without its relative position bias (the authors' code; spec grid.parity)
        self.image_rel_bias = True
        # SNLI-VE as the task's --add-caption and --prompt-type build it (spec model.add_caption, prompt_type)
        self.add_caption = False
        self.prompt_type = "none"
        self.max_src_length = MAX_SRC_LENGTH  # words kept per SNLI-VE sentence (the checkpoint's task setting)
        # Token positions the position tables hold: the absolute table (max_position_embeddings + 2 rows, as
        # fairseq sizes it) and the relative-position buckets, the smaller of the two; past it an index fails.
        self.text_positions = positions_held(model.encoder)
        self.decoder_positions = positions_held(model.decoder)
        self._input_flops: dict[tuple, float] = {}

    # --- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path, tokenizer=None) -> OFAAdapter:
        """A folder with config.json (ModelScope's fields) and model.safetensors (ModelScope's names)."""
        from safetensors.torch import load_file

        path = Path(path)
        config, weights = path / "config.json", path / "model.safetensors"
        for f in (config, weights):
            if not f.is_file():
                hint = " (a pytorch_model.bin or .pt? convert it to safetensors first)" if f == weights else ""
                raise SpecError(f"checkpoint file not found: {f}{hint}")
        try:
            cfg = OFAConfig.from_dict(json.loads(config.read_text()))
        except (ValueError, AttributeError) as e:  # not JSON, or not an object
            raise SpecError(f"{config}: not an OFA config ({str(e).splitlines()[0]})") from None
        except SpecError as e:
            raise SpecError(f"{config}: {e}") from None
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors' own error types: a torn or foreign file
            raise SpecError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
        model = OFAModel(cfg)
        load_weights(model, state, str(weights))
        return cls(model, tokenizer)

    @classmethod
    def random(cls, shape: str = "tiny", seed: int = 0, **overrides) -> OFAAdapter:
        """Random weights of a released size (`random:ofa-base` style checkpoints, speed benchmarks);
        `overrides` change config fields (tests shrink the vocabulary and the ResNet)."""
        name = shape.removeprefix("ofa-")
        torch.manual_seed(seed)
        model = OFAModel(preset(name, **overrides))
        randomise(model)
        adapter = cls(model)
        adapter.image_size = IMAGE_SIZES.get(name, 256)
        return adapter

    image_size: int = 256  # patch_image_size: what every image is resized to
    tokenizer_dir: Path | None = None  # where the tokenizer's vocab.json and merges.txt came from

    @classmethod
    def load(cls, checkpoint: Checkpoint) -> OFAAdapter:
        """A converted folder (`mue-bench convert`: model.safetensors, config.json, the tokenizer files and
        ofa_task.json with the fine-tuning resolution), or random weights of a released size."""
        if checkpoint.kind == "random":
            return cls.random(checkpoint.ref)
        folder = checkpoint.path
        assert folder is not None  # parse_checkpoint admits folders and random shapes only for OFA
        tokenizer = load_tokenizer(folder) if tokenizer_files(folder) == "hf" else None
        adapter = cls.from_folder(folder, tokenizer)
        adapter.tokenizer_dir = folder if tokenizer is not None else None
        task_file = folder / TASK_FILE
        task = json.loads(task_file.read_text()) if task_file.is_file() else {}
        size = task.get("patch_image_size") or IMAGE_SIZES.get(str(task.get("arch", "")).removeprefix("ofa_"))
        adapter.image_size = int(size or PATCH_IMAGE_SIZE)
        adapter.max_src_length = int(task.get("max_src_length") or MAX_SRC_LENGTH)
        return adapter

    # --- training (training/finetune.py) -------------------------------------------------------------
    def target_ids(self, texts: list[str], max_len: int) -> torch.Tensor:
        """What the decoder learns to emit after its prompt: BPE(" " + cleaned text) + </s> (caption_dataset.py:
        128-131, snli_ve_dataset.py:153), cut to `max_len`, right-padded with <pad>."""
        rows = [[*self._words(" " + pre_caption(t))[: max_len - 1], self.eos_id] for t in texts]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=torch.long)

    def teacher_forced(self, batch: OFABatch, labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every decoder layer's output [B, T, D] over [decoder prompt; answer] and the targets [B, T] the loss
        reads (inputs.teacher_forcing): the prompt is `decoder_prompts`, the one a ranking pass scores after, so
        a model is trained on the prompt it is evaluated on (<s> alone for prompt_type "none")."""
        answers = [row[: row.index(self.eos_id)] for row in labels.tolist()]
        dec_in, targets = teacher_forcing(self.decoder_prompts(batch), answers)
        if dec_in.shape[1] > self.decoder_positions:
            raise SpecError(f"a training row is {dec_in.shape[1]} decoder positions ([decoder prompt; target]), over "
                            f"the {self.decoder_positions} of this checkpoint's position table; lower max_target_len "
                            "or shorten the data's text")
        dec_in, targets = dec_in.to(batch.ids.device), targets.to(batch.ids.device)
        enc_out, enc_mask, src_pos = self.model.encode(self._pixels(batch), batch.ids, batch.mask)
        return self.model.decoder_states(dec_in, enc_out, enc_mask, src_pos), targets

    def save(self, out: Path) -> None:
        """A folder `OFAAdapter.load` reads: safetensors (each tied tensor once), config, tokenizer, resolution."""
        from safetensors.torch import save_file

        state = self.model.state_dict()
        for group in tied_names(self.model):
            for name in group[1:]:
                del state[name]
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(self.model.cfg.to_dict(), indent=2) + "\n")
        (out / TASK_FILE).write_text(json.dumps({"patch_image_size": self.image_size}) + "\n")
        if self.tokenizer_dir is not None:  # the files it was read from, byte for byte
            for name in HF_FILES:
                shutil.copyfile(self.tokenizer_dir / name, out / name)

    # --- inputs -------------------------------------------------------------------------------------
    def prepare(self, samples: list[Sample]) -> OFABatch:
        """Images and prompts as OFA's caption and SNLI-VE tasks build them (inputs.py); a JSONL sample's own
        prompt replaces the task's."""
        sources = [self._fitting_source(s) for s in samples]  # before the images: a refusal costs no decoding
        images = []
        for s in samples:
            with open_image(s.image) as im:
                images.append(preprocess_image(im, self.image_size))
        return collate(images, sources, self.pad_id)

    def _source(self, sample: Sample) -> list[int]:
        return [self.bos_id, *self._words(sample.prompt or self._task_text(sample)), self.eos_id]

    def _fitting_source(self, sample: Sample) -> list[int]:
        """The source, refused in one line where the position tables cannot hold it (an index past them fails)."""
        ids = self._source(sample)
        if len(ids) > self.text_positions:
            raise SpecError(f"sample {sample.sample_id}: its OFA source is {len(ids)} tokens, over the "
                            f"{self.text_positions} text positions of this checkpoint's position table; "
                            f"{self._source_fix(sample)}")
        return ids

    def _source_fix(self, sample: Sample) -> str:
        if sample.prompt:
            return "shorten the sample's own prompt"
        if sample.task == "caption":
            return "the table cannot hold OFA's caption prompt: use a checkpoint with a larger one"
        sentences = "hypothesis and premise" if self.add_caption else "hypothesis"
        return (f"its {sentences} are already cut to {self.max_src_length} words each, as OFA's task cuts them "
                "(max_src_length): shorten them" + (", or remove model.add_caption" if self.add_caption else ""))

    def _task_text(self, sample: Sample) -> str:
        if sample.task == "caption":
            return caption_text()
        if self.add_caption and not sample.premise:
            raise SpecError(f"model.add_caption: sample {sample.sample_id} has no premise (SNLI-VE's sentence1); "
                            "use data that carries it, or remove add_caption")
        return entailment_text(sample.hypothesis, sample.premise if self.add_caption else None, self.max_src_length)

    def decoder_prompts(self, batch: OFABatch) -> list[list[int]]:
        """Each sample's source as the task turns it into the decoder prompt (`prompt_type`, inputs.py)."""
        lengths = batch.mask.sum(1).tolist()
        return [decoder_prompt(row[:n], self.prompt_type) for row, n in zip(batch.ids.tolist(), lengths)]

    def _words(self, text: str) -> list[int]:
        """BPE ids of `text`; without a tokenizer (random weights) each word an id by hash, clear of the specials."""
        if self.tokenizer is not None:
            return encode(self.tokenizer, text)
        vocab = self.model.cfg.vocab_size
        return [N_SPECIAL + zlib.crc32(w.encode()) % (vocab - N_SPECIAL) for w in text.split()]

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        """BPE(" " + answer) + </s>, as OFA scores SNLI-VE's candidates (snli_ve.py:82-89)."""
        if self.tokenizer is None:
            raise SpecError("decoding.answers: this OFA checkpoint has no tokenizer (vocab.json, merges.txt) to "
                            "spell the answers with; convert it with --tokenizer, or set decoding.answers = []")
        return (*encode(self.tokenizer, " " + answer), self.eos_id)

    def text(self, ids: list[int]) -> str:
        kept = [i for i in ids if i not in (self.bos_id, self.eos_id, self.pad_id)]
        if self.tokenizer is None:
            return " ".join(map(str, kept))
        return self.tokenizer.decode(kept).strip()

    def decoding(self, num_beams: int = 1, max_len: int = 16, no_repeat_ngram: int = 0, ignore_eos: bool = False,
                 ) -> DecodingConfig:
        if max_len > self.decoder_positions:  # step t's token sits at decoder position t
            raise SpecError(f"decoding.max_len {max_len}: this OFA checkpoint's decoder position table holds "
                            f"{self.decoder_positions} positions; set max_len <= {self.decoder_positions}")
        return DecodingConfig(self.bos_id, self.eos_id, self.pad_id, num_beams, max_len, no_repeat_ngram,
                              beam_style="ofa", ignore_eos=ignore_eos)

    def reference_generate(self, batch: OFABatch, decoding: DecodingConfig) -> list[list[int]]:
        """The model's own generation, untouched by the engine."""
        return self.model.generate(self._pixels(batch), batch.ids, batch.mask, decoding)

    def _pixels(self, batch: OFABatch) -> torch.Tensor:
        return batch.images.to(self.model.encoder.image_proj.weight.dtype)

    def input_flops(self, batch: OFABatch) -> float:
        """FLOPs per sample of the work no exit skips: the ResNet and image_proj, and the position biases
        built once per batch (the encoder's TUPE bias, the decoder's cross-attention position keys)."""
        key = (tuple(batch.images.shape[1:]), batch.ids.shape[1])
        if key not in self._input_flops:
            one = OFABatch(self._pixels(batch)[:1], batch.ids[:1], batch.mask[:1])

            def fixed_work() -> None:
                _, grid = self.model.encoder.embed_image(one.images)
                DecoderPositions(self.model.decoder, self.model.encoder.positions(grid, one.ids.shape[1]).src_pos)

            self._input_flops[key] = counted_flops(fixed_work)
        return self._input_flops[key]

    # --- ExitAdapter --------------------------------------------------------------------------------
    def embed_streams(self, batch: OFABatch) -> Streams:
        enc = self.model.encoder
        image, grid = enc.embed_image(self._pixels(batch))
        self._positions = enc.positions(grid, batch.ids.shape[1])
        self._positions_by_width[self._positions.n_img + self._positions.n_txt] = self._positions
        return Streams(image, enc.embed_text(batch.ids, batch.mask), batch.mask)

    def _encoder_positions(self, n: int, stream: str) -> EncoderPositions:
        pos = self._positions
        assert pos is not None, "embed_streams runs before the encoder layers"
        expected = {"joint": pos.n_img + pos.n_txt, "image": pos.n_img, "text": pos.n_txt}[stream]
        assert n == expected, f"{stream} stream of {n} positions; embed_streams saw {expected}"
        return pos

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        enc = self.model.encoder
        bias = enc.layer_bias(self._encoder_positions(h.shape[1], stream), layer, stream, queries,
                              image_rel=self.image_rel_bias)
        return enc.layers[layer](h, bias + additive_mask(key_mask, h.dtype), queries)

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor:
        norm = self.model.encoder.layer_norm
        return h if norm is None else norm(h)

    def _joint_positions(self, n: int) -> EncoderPositions:
        """The positions of an encoder output n wide: the last batch's, or an earlier batch's of that width
        (position biases depend on the width only)."""
        pos = self._positions_by_width.get(n)
        return pos if pos is not None else self._encoder_positions(n, "joint")

    def decoder_cache(self, enc_out: torch.Tensor) -> OFACache:
        pos = self._joint_positions(enc_out.shape[1])
        dec = self.model.decoder
        return OFACache(self.n_dec_layers, lambda layer: dec.layers[layer].cross_kv(enc_out),
                        DecoderPositions(dec, pos.src_pos))

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        self._step = step
        return self.model.decoder.embed(tokens[:, None], step)[:, 0]

    def _decoder_layer(self, layer: int, h: torch.Tensor, cache: TensorKVCache, enc_mask: torch.Tensor,
                       positions: DecoderPositions, history: int) -> torch.Tensor:
        """`history`: the entries layer `layer` holds. Every kv_fill but "none" leaves one per step; with "none"
        a layer holds fewer, and its keys take the bias columns of the last positions, as the authors'
        attention slices its bias to the key length (unify_multihead_attention.py)."""
        step = self._step
        cross_bias = positions.cross_bias(step) + additive_mask(enc_mask, h.dtype)
        self_bias = positions.self_bias(layer, step)[..., step - history:]
        out, k, v = self.model.decoder.layers[layer](h[:, None], cache.past(layer), cache.cross(layer), self_bias,
                                                     cross_bias)
        cache.append(layer, k, v)
        return out[:, 0]

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: OFACache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        return self._decoder_layer(layer, h, cache, enc_mask, cache.positions, cache.length(layer))

    def decoder_layer_rows(self, layer: int, h: torch.Tensor, rows: torch.Tensor, cache: OFACache,
                           enc_mask: torch.Tensor) -> torch.Tensor:
        sub = cache.rows(layer, rows)
        out = self._decoder_layer(layer, h, sub, enc_mask[rows], cache.positions, cache.length(layer))
        cache.append_rows(layer, rows, sub)
        return out

    # --- full-sequence decoder (rank.py) ------------------------------------------------------------------
    def sequence_context(self, enc_out: torch.Tensor, enc_mask: torch.Tensor, n_positions: int) -> OFASequence:
        pos = self._joint_positions(enc_out.shape[1])
        cross_bias, self_biases = self.model.decoder.full_biases(n_positions, pos.src_pos)
        return OFASequence(self_biases, cross_bias, enc_out, enc_mask, {})

    def decoder_sequence_embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.embed(tokens, 0)

    def decoder_sequence_layer(self, layer: int, h: torch.Tensor, context: OFASequence, samples: torch.Tensor,
                               key_mask: torch.Tensor) -> torch.Tensor:
        """As OFAModel.decoder_states computes a layer: padding masked as keys, no cache."""
        block = self.model.decoder.layers[layer]
        if layer not in context.cross:
            context.cross[layer] = block.cross_kv(context.enc_out)
        k, v = context.cross[layer]
        cross_bias = context.cross_bias + additive_mask(context.enc_mask[samples], h.dtype)
        self_bias = context.self_biases[layer] + additive_mask(key_mask, h.dtype)
        out, _, _ = block(h, None, (k[samples], v[samples]), self_bias, cross_bias)
        return out

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        return self.model.decoder.layers[layer].self_kv(h[:, None])

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model.decoder.logits(h), -1, dtype=torch.float32)


def positions_held(stack: torch.nn.Module) -> int:
    """How many token positions an encoder's or decoder's position tables can index."""
    return min(stack.embed_positions.num_embeddings, stack.token_rp_bucket.shape[0])


def randomise(model: OFAModel) -> OFAModel:
    """Random weights under which a random OFA's outputs depend on its inputs and vary from step to step:
    unit-variance embeddings, position and relative-bias tables (zero-initialised in OFA), linear layers
    scaled by fan-in, identity norms; each ResNet block's last BatchNorm scaled down so that deep ResNets
    stay finite (BatchNorm statistics stay neutral)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() == 0:  # a contrastive temperature: kept as configured
                continue
            if p.dim() == 4:  # convolutions
                p.normal_(0, (2.0 / p[0].numel()) ** 0.5)
            elif p.dim() == 1 and (name.endswith("c_attn") or "norm" in name or "_ln" in name or ".bn" in name
                                   or "downsample.1" in name):
                p.fill_(1.0 if leaf == "weight" or leaf == "c_attn" else 0.0)
                if ".bn3." in name and leaf == "weight":
                    p.fill_(0.2)
            elif leaf == "bias":
                p.normal_(0, 0.02)
            elif "embed" in name or "rel_pos_table" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model
