"""The exit engine's view of transformers' Florence2ForConditionalGeneration (DaViT + BART).

Every call goes through the model's own modules (embeddings, `BartEncoderLayer`, `BartDecoderLayer`, the
masking utilities, `EncoderDecoderCache`), so with nothing exiting the result is what `generate()` gives.
Florence-2's prompt is `<image>` placeholders followed by `<s> text </s>`: the image stream is that prefix
and the text stream the rest, which is exactly the engine's [image; text] order in `freeze` mode.
BART is post-norm and its encoder has no final norm: an exited state goes straight to the LM head.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from mue_bench.data.loaders import Sample
from mue_bench.errors import MueBenchError
from mue_bench.models.hf.base import (
    HFAdapterBase,
    HFBatch,
    cache_kwarg,
    eos_ids,
    heads_view,
    task_prompt,
    token_ids,
)
from mue_bench.models.hf.cache import HFKVCache
from mue_bench.mue.adapter import Streams
from mue_bench.mue.cache import KV
from mue_bench.mue.cost import LayerDims

CAPTION_PROMPT = "<CAPTION>"


class Florence2Adapter(HFAdapterBase):
    family = "florence2"
    row_subsets = True  # layers are pure per row given masks and cache: the engine compacts batches
    model_class = "Florence2ForConditionalGeneration"
    pixel_std = 0.25

    def __init__(self, model, processor=None, generation_config: str = "checkpoint"):
        super().__init__(model, processor, generation_config)
        lm = model.model.language_model
        self.encoder, self.decoder, self.text_config = lm.encoder, lm.decoder, lm.config
        cfg = self.text_config
        self.n_enc_layers, self.n_dec_layers = cfg.encoder_layers, cfg.decoder_layers
        self.image_token_id = model.config.image_token_id
        gen = model.generation_config
        start = gen.decoder_start_token_id
        self.bos_id = start if start is not None else cfg.decoder_start_token_id
        self.eos = eos_ids(gen.eos_token_id, cfg.eos_token_id)
        self.eos_id = self.eos[0]
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else cfg.pad_token_id
        self.dims = LayerDims(cfg.d_model, cfg.encoder_ffn_dim, cfg.d_model, vocab=cfg.vocab_size)
        self._head_dim = cfg.d_model // cfg.decoder_attention_heads
        self._n_img: int | None = None

    @classmethod
    def random(cls, shape: str, attn_implementation: str = "sdpa") -> Florence2Adapter:
        return random_florence2(shape, attn_implementation=attn_implementation)

    # --- inputs -----------------------------------------------------------------------------------
    def prompt_text(self, sample: Sample) -> str:
        return prompt(sample)

    def hash_prompt_ids(self, sample: Sample) -> list[int]:
        """`<image>` placeholders, then <s> words </s>."""
        return [self.image_token_id] * self._n_image_tokens() + self.hash_token_ids(prompt(sample))

    def _n_image_tokens(self) -> int:
        if self._n_img is None:
            with torch.no_grad():
                p = next(self.model.parameters())
                size = self.image_size or 32
                self._n_img = self.image_features(torch.zeros(1, 3, size, size, device=p.device,
                                                              dtype=p.dtype)).shape[1]
        return self._n_img

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.model.get_image_features(pixels).pooler_output

    def hash_token_ids(self, text: str, max_len: int | None = None) -> list[int]:
        """<s> words </s>, each word an id by hash: the tokenizer of processor-less (random) models."""
        cfg = self.text_config
        words = self.hash_words(text)
        return [cfg.bos_token_id] + words[: None if max_len is None else max_len - 2] + [cfg.eos_token_id]

    def special_ids(self) -> set[int]:
        cfg = self.text_config
        return super().special_ids() | token_ids(self.image_token_id, cfg.bos_token_id, cfg.eos_token_id,
                                                 cfg.pad_token_id, cfg.decoder_start_token_id)

    def target_ids(self, texts: list[str], max_len: int) -> torch.Tensor:
        if self.processor is not None:  # BART's labels: <s> text </s>, as Florence-2 was trained
            return self.processor.tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                                            return_tensors="pt")["input_ids"]
        return self.pad_rows([self.hash_token_ids(t, max_len) for t in texts])

    # --- training (finetune.py) ---------------------------------------------------------------------
    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the start token, then the labels shifted right."""
        from transformers.models.florence2.modeling_florence2 import shift_tokens_right

        return shift_tokens_right(labels, self.pad_id, self.bos_id)

    def decoder_states(self, batch: HFBatch, labels: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder layer's output [B, T, D] under teacher forcing (the model's own forward)."""
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         pixel_values=batch.pixel_values, decoder_input_ids=self.decoder_inputs(labels),
                         output_hidden_states=True, use_cache=False)
        return list(out.decoder_hidden_states[1:])

    # --- ExitAdapter: encoder -----------------------------------------------------------------------
    def embed_streams(self, batch: HFBatch) -> Streams:
        inner = self.model.model
        embeds = inner.get_input_embeddings()(batch.input_ids)
        features = self.image_features(batch.pixel_values).to(embeds.device, embeds.dtype)
        is_img = batch.input_ids == self.image_token_id
        n_img = features.shape[1]
        if not bool(is_img[:, :n_img].all()) or bool(is_img[:, n_img:].any()):
            raise MueBenchError(f"Florence-2 inputs must start with exactly {n_img} image tokens "
                                f"(id {self.image_token_id}); use the model's processor")
        embeds = embeds.masked_scatter(is_img[..., None], features)
        h = embeds + self.encoder.embed_positions(embeds[:, :, -1]).to(embeds.device)
        h = self.encoder.layernorm_embedding(h)
        return Streams(h[:, :n_img], h[:, n_img:], batch.attention_mask[:, n_img:].bool())

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        mask = self._memoised(("enc", tuple(h.shape)), key_mask, lambda: create_bidirectional_mask(
            config=self.text_config, inputs_embeds=h, attention_mask=key_mask))
        module = self.encoder.layers[layer]
        if queries is None:
            return module(h, mask)
        return _bart_encoder_layer_for(module, h, mask, queries)

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor:
        return h

    # --- ExitAdapter: decoder -----------------------------------------------------------------------
    def decoder_cache(self, enc_out: torch.Tensor) -> HFKVCache:
        self._enc_out = enc_out
        head_dim = self._head_dim

        def cross_kv(layer: int) -> KV:
            attn = self.decoder.layers[layer].encoder_attn
            return heads_view(attn.k_proj(enc_out), head_dim), heads_view(attn.v_proj(enc_out), head_dim)

        return HFKVCache(self.text_config, cross_kv)

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        embeds = self.decoder.embed_tokens(tokens[:, None])
        positions = torch.arange(1, device=embeds.device) + step
        h = embeds + self.decoder.embed_positions(tokens[:, None], step, position_ids=positions).to(embeds.device)
        return self.decoder.layernorm_embedding(h)[:, 0]

    def _step_masks(self, layer: int, x: torch.Tensor, cache: HFKVCache, enc_mask: torch.Tensor):
        """(self-attention mask, cross-attention mask) for all rows of the batch at this step."""
        if layer == 0:  # every layer holds `step` positions before layer 0 appends: the step's causal mask
            rows = enc_mask.shape[0]
            self._self_mask = create_causal_mask(
                config=self.text_config, inputs_embeds=x.new_zeros(rows, 1, x.shape[-1]),
                attention_mask=torch.ones(rows, cache.length(0) + 1, device=x.device, dtype=torch.long),
                **cache_kwarg(create_causal_mask, cache.hf.self_attention_cache))
        cross_mask = self._memoised(("cross", enc_mask.shape[0]), enc_mask, lambda: create_bidirectional_mask(
            config=self.text_config, inputs_embeds=x, attention_mask=enc_mask,
            encoder_hidden_states=self._enc_out))
        return self._self_mask, cross_mask

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: HFKVCache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        x = h[:, None]
        self_mask, cross_mask = self._step_masks(layer, x, cache, enc_mask)
        block = self.decoder.layers[layer]
        out = block(x, self_mask, self._enc_out, encoder_attention_mask=cross_mask, use_cache=True,
                    **cache_kwarg(type(block).forward, cache.hf))
        return out[:, 0]

    def decoder_layer_rows(self, layer: int, h: torch.Tensor, rows: torch.Tensor, cache: HFKVCache,
                           enc_mask: torch.Tensor) -> torch.Tensor:
        x = h[:, None]
        self_mask, cross_mask = (None if m is None else m[rows] for m in self._step_masks(layer, x, cache, enc_mask))
        sub = cache.rows(layer, rows)
        block = self.decoder.layers[layer]
        out = block(x, self_mask, self._enc_out[rows], encoder_attention_mask=cross_mask, use_cache=True,
                    **cache_kwarg(type(block).forward, sub.hf))
        cache.append_rows(layer, rows, sub)
        return out[:, 0]

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        attn = self.decoder.layers[layer].self_attn
        return heads_view(attn.k_proj(h[:, None]), self._head_dim), heads_view(attn.v_proj(h[:, None]),
                                                                                  self._head_dim)

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h).float().log_softmax(-1)


def _bart_encoder_layer_for(layer, h: torch.Tensor, mask, queries: slice) -> torch.Tensor:
    """`BartEncoderLayer.forward` (inference) for the positions `queries` only, keys/values from all of h.

    The layer's attention takes separate key/value states (its cross-attention path), so the saturated
    modality costs only its K/V projections. Must mirror transformers' layer; the adapter tests compare.
    """
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        mask = mask[:, :, queries]
    x = h[:, queries]
    attn, _ = layer.self_attn(x, key_value_states=h, attention_mask=mask)
    x = layer.self_attn_layer_norm(x + attn)
    x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
    if x.dtype == torch.float16 and not torch.isfinite(x).all():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


def prompt(sample: Sample) -> str:
    """Florence-2's task tokens: captioning is `<CAPTION>`; entailment asks the hypothesis as a question."""
    return task_prompt(sample, CAPTION_PROMPT)


# --- randomly initialised models of the real class, built from config (no download) ----------------
# "tiny" is for tests; "base" and "large" have the published checkpoints' shapes, for speed benchmarks in
# fixed-exit mode (their random weights produce meaningless text).
SHAPES = {
    "tiny": dict(vision=dict(depths=[1, 1, 1, 1], embed_dim=[16, 32, 32, 32], num_heads=[1, 2, 2, 2],
                             num_groups=[1, 2, 2, 2], window_size=2, projection_dim=32),
                 text=dict(vocab_size=64, d_model=32, layers=4, heads=2, ffn=64), image_size=64, image_token_id=63),
    "base": dict(vision=dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                             num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768),
                 text=dict(vocab_size=51289, d_model=768, layers=6, heads=12, ffn=3072), image_size=768,
                 image_token_id=51289),
    "large": dict(vision=dict(depths=[1, 1, 9, 1], embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                              num_groups=[8, 16, 32, 64], window_size=12, projection_dim=1024),
                  text=dict(vocab_size=51289, d_model=1024, layers=12, heads=16, ffn=4096), image_size=768,
                  image_token_id=51289),
}


Florence2Adapter.shapes = SHAPES


def florence2_config(shape: str, attn_implementation: str = "sdpa"):
    from transformers import BartConfig, Florence2Config
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    s = SHAPES[shape]
    t = s["text"]
    text = BartConfig(vocab_size=t["vocab_size"] + (1 if shape != "tiny" else 0), d_model=t["d_model"],
                      encoder_layers=t["layers"], decoder_layers=t["layers"], encoder_attention_heads=t["heads"],
                      decoder_attention_heads=t["heads"], encoder_ffn_dim=t["ffn"], decoder_ffn_dim=t["ffn"],
                      max_position_embeddings=1024, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      decoder_start_token_id=2, forced_eos_token_id=None)
    vision = Florence2VisionConfig(drop_path_rate=0.0, **s["vision"])
    cfg = Florence2Config(vision_config=vision, text_config=text, image_token_id=s["image_token_id"],
                          tie_word_embeddings=shape != "tiny")
    cfg._attn_implementation = attn_implementation
    return cfg


def random_florence2(shape: str = "tiny", seed: int = 0, attn_implementation: str = "sdpa") -> Florence2Adapter:
    """A randomly initialised Florence2ForConditionalGeneration. The tiny one gets large embeddings, small
    layer weights and an untied, large head, so that generations vary by input and by step and EOS comes
    at different steps (default initialisation just repeats one token)."""
    from transformers import Florence2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(florence2_config(shape, attn_implementation))
    if shape == "tiny":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lm_head" in name or "embed_tokens" in name or "shared" in name or "embed_positions" in name:
                    p.normal_(0, 1.0)
                elif p.dim() > 1:
                    p.normal_(0, 0.1)
                elif "norm" not in name:
                    p.normal_(0, 0.1)
            model.lm_head.weight[model.config.text_config.eos_token_id] *= 2.0
    adapter = Florence2Adapter(model)
    adapter.image_size = SHAPES[shape]["image_size"]
    return adapter


def random_inputs(adapter: Florence2Adapter, prompt_lengths: list[int], image_size: int, seed: int = 0,
                  ) -> HFBatch:
    """Right-padded prompts of the given lengths (BOS ... EOS) after the image placeholders, random pixels."""
    g = torch.Generator().manual_seed(seed)
    cfg, text = adapter.model.config, adapter.text_config
    pixels = torch.randn(len(prompt_lengths), 3, image_size, image_size, generator=g)
    with torch.no_grad():
        n_img = adapter.model.model.get_image_features(pixels[:1]).pooler_output.shape[1]
    width = n_img + max(prompt_lengths)
    ids = torch.full((len(prompt_lengths), width), text.pad_token_id)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(prompt_lengths):
        ids[b, :n_img] = cfg.image_token_id
        ids[b, n_img] = text.bos_token_id
        ids[b, n_img + 1: n_img + n - 1] = torch.randint(3, min(text.vocab_size - 1, 60), (n - 2,), generator=g)
        ids[b, n_img + n - 1] = text.eos_token_id
        mask[b, : n_img + n] = 1
    return HFBatch(ids, mask, pixels)
