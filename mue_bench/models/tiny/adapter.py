"""The exit engine's view of the built-in model (see mue/adapter.py for the protocol)."""

from __future__ import annotations

from pathlib import Path

import torch

from mue_bench.data.loaders import Sample
from mue_bench.errors import SpecError
from mue_bench.models.tiny.inputs import TinyBatch, collate, load_pixels, prompt
from mue_bench.models.tiny.model import TinyOFA
from mue_bench.models.tiny.tokenizer import WordTokenizer
from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.cache import KV, TensorKVCache
from mue_bench.mue.cost import LayerDims, counted_flops
from mue_bench.mue.search import DecodingConfig
from mue_bench.spec import parse_checkpoint


class TinyAdapter(ExitAdapter):
    family = "mue-tiny"
    row_subsets = True  # every layer is a pure function of its rows: the engine compacts batches

    def __init__(self, model: TinyOFA, tokenizer: WordTokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        cfg = model.cfg
        self.n_enc_layers, self.n_dec_layers = cfg.enc_layers, cfg.dec_layers
        self.bos_id, self.eos_id, self.pad_id = cfg.bos_id, cfg.eos_id, cfg.pad_id
        self.dims = LayerDims(cfg.d_model, cfg.d_ff, cfg.d_model, vocab=cfg.vocab_size)
        self.native_encoder_mode = "freeze" if cfg.encoder_attention == "joint" else "split"
        self._input_flops: float | None = None

    @classmethod
    def load(cls, checkpoint: str | Path) -> TinyAdapter:
        """A built-in name (e.g. "mue-tiny") or a folder with model.safetensors, config.json, tokenizer.json."""
        try:
            path = parse_checkpoint(cls.family, str(checkpoint)).path
        except ValueError as e:
            raise SpecError(f"checkpoint: {e}") from None
        assert path is not None  # mue-tiny checkpoints are built-in names or folders
        return cls(TinyOFA.load(path), WordTokenizer.load(path / "tokenizer.json"))

    # --- inputs -----------------------------------------------------------------------------------
    def prepare(self, samples: list[Sample]) -> TinyBatch:
        size = self.model.cfg.image_size
        return collate([load_pixels(s.image, size) for s in samples], [prompt(s) for s in samples],
                       self.tokenizer)

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def decoding(self, num_beams: int = 1, max_len: int = 16, no_repeat_ngram: int = 0, ignore_eos: bool = False,
                 ) -> DecodingConfig:
        return DecodingConfig(self.bos_id, self.eos_id, self.pad_id, num_beams, max_len, no_repeat_ngram,
                              ignore_eos=ignore_eos)

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        ids = self.tokenizer.encode(answer)
        if self.tokenizer.unk_id in ids:
            raise SpecError(f"decoding.answers: {answer!r} has words outside the model's vocabulary")
        return tuple(ids)

    def reference_generate(self, batch: TinyBatch, decoding: DecodingConfig) -> list[list[int]]:
        """The model's own generation, untouched by the engine."""
        return self.model.generate(batch.images, batch.ids, batch.mask, decoding)

    def input_flops(self, batch: TinyBatch) -> float:
        """FLOPs per sample of the image embedding (stem and patch projection), which no threshold skips."""
        if self._input_flops is None:
            self._input_flops = counted_flops(lambda: self.model.embed_image(self._pixels(batch)[:1]))
        return self._input_flops

    def _pixels(self, batch: TinyBatch) -> torch.Tensor:
        """The batch's images in the model's dtype."""
        return batch.images.to(self.model.patch_embed.weight.dtype)

    # --- ExitAdapter ------------------------------------------------------------------------------
    def embed_streams(self, batch: TinyBatch) -> Streams:
        return Streams(self.model.embed_image(self._pixels(batch)), self.model.embed_text(batch.ids), batch.mask)

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        return self.model.encoder[layer](h, key_mask, queries)

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.enc_norm(h)

    def decoder_cache(self, enc_out: torch.Tensor) -> TensorKVCache:
        return TensorKVCache(self.n_dec_layers, lambda layer: self.model.decoder[layer].cross_attn.kv(enc_out))

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        return self.model.embed_decoder(tokens[:, None], step)[:, 0]

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: TensorKVCache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        out, k, v = self.model.decoder[layer](h[:, None], cache.past(layer), cache.cross(layer), enc_mask)
        cache.append(layer, k, v)
        return out[:, 0]

    def decoder_layer_rows(self, layer: int, h: torch.Tensor, rows: torch.Tensor, cache: TensorKVCache,
                           enc_mask: torch.Tensor) -> torch.Tensor:
        sub = cache.rows(layer, rows)
        out = self.decoder_layer(layer, h, sub, enc_mask[rows])
        cache.append_rows(layer, rows, sub)
        return out

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        return self.model.decoder[layer].self_kv(h[:, None])

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.logits(h).float().log_softmax(-1)
