"""The exit engine's view of transformers' T5Gemma2ForConditionalGeneration (SigLIP + Gemma 3 encoder-decoder).

Every call goes through the model's own modules: the scaled embeddings, `T5Gemma2EncoderLayer`,
`T5Gemma2DecoderLayer` with its merged self+cross attention, the rotary embeddings, the masking utilities
and an `EncoderDecoderCache` whose self-attention part has the model's sliding-window layers.

What differs from Florence-2, and why the code looks the way it does:
- The prompt is `bos text <boi> <image>x N <eoi> text`: the image sits inside the text. The engine's streams
  are [image; text], so positions are gathered per stream, and RoPE and the sliding-window masks use each
  token's original (joint) position, never its index in a stream. Without exits the encoder therefore
  computes exactly what the model computes, only with its rows permuted.
- Pre-norm layers: an exited state goes through the final norm (`encoder.norm`, `decoder.norm`), the head
  and the final logit softcapping; a CALM-propagated K/V goes through the skipped layer's input norm.
- The decoder start token is `bos`; a generation config may name several EOS ids.
"""

from __future__ import annotations

import copy

import torch
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

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

CAPTION_PROMPT = "Caption this image."
SLIDING, FULL = "sliding_attention", "full_attention"


class T5Gemma2Adapter(HFAdapterBase):
    family = "t5gemma2"
    model_class = "T5Gemma2ForConditionalGeneration"
    row_subsets = True  # positions and masks are gathered per row: the engine compacts batches

    def __init__(self, model, processor=None, generation_config: str = "checkpoint"):
        super().__init__(model, processor, generation_config)
        encoder = model.model.encoder
        self.text_encoder, self.decoder = encoder.text_model, model.model.decoder
        self.enc_config, self.dec_config = self.text_encoder.config, model.config.decoder
        self.n_enc_layers = self.enc_config.num_hidden_layers
        self.n_dec_layers = self.dec_config.num_hidden_layers
        self.image_token_id = model.config.image_token_index
        self.boi_id, self.eoi_id = encoder.config.boi_token_index, encoder.config.eoi_token_index
        self.n_image_tokens = encoder.config.mm_tokens_per_image
        gen, dec = model.generation_config, self.dec_config
        self.bos_id = dec.bos_token_id  # T5Gemma 2's decoder starts from bos
        self.eos = eos_ids(gen.eos_token_id, dec.eos_token_id)
        self.eos_id = self.eos[0]
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else dec.pad_token_id
        heads, kv_heads, head_dim = dec.num_attention_heads, dec.num_key_value_heads, dec.head_dim
        self.dims = LayerDims(dec.hidden_size, dec.intermediate_size, kv_heads * head_dim, d_q=heads * head_dim,
                              ffn_mats=3, merged_cross=True,
                              dec_windows=tuple(dec.sliding_window if t == SLIDING else None for t in dec.layer_types),
                              vocab=dec.vocab_size)
        self._head_dim = head_dim
        self._softcap = dec.final_logit_softcapping
        self._positions: dict[str, torch.Tensor] = {}

    @classmethod
    def random(cls, shape: str, attn_implementation: str = "sdpa") -> T5Gemma2Adapter:
        return random_t5gemma2(shape, attn_implementation=attn_implementation)

    # --- inputs -----------------------------------------------------------------------------------
    def prompt_text(self, sample: Sample) -> str:
        """The chat turn the processor expands: its image token becomes <boi> <image>x N <eoi>."""
        text = prompt(sample)
        boi = getattr(self.processor, "boi_token", "<start_of_image>")
        if boi in text:
            return text
        tokenizer = getattr(self.processor, "tokenizer", None)
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            turn = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            bos = tokenizer.bos_token or ""
            return turn[len(bos):] if bos and turn.startswith(bos) else turn  # the tokenizer adds bos itself
        return f"<start_of_turn>user\n{boi}{text}<end_of_turn>\n<start_of_turn>model\n"

    def hash_prompt_ids(self, sample: Sample) -> list[int]:
        """bos, a word, the image, then the prompt's words: the text stream has a gap, as in a chat turn."""
        words = self.hash_words(prompt(sample))
        image = [self.boi_id] + [self.image_token_id] * self.n_image_tokens + [self.eoi_id]
        return [self.bos_id] + self.hash_words("user") + image + words

    def special_ids(self) -> set[int]:
        enc = self.enc_config
        return super().special_ids() | token_ids(self.boi_id, self.eoi_id, self.image_token_id, enc.bos_token_id,
                                                 enc.eos_token_id, enc.pad_token_id)

    def target_ids(self, texts: list[str], max_len: int) -> torch.Tensor:
        """text then EOS (the decoder starts from bos on its own)."""
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            rows = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len - 1)["input_ids"]
        else:
            rows = [self.hash_words(t)[: max_len - 1] for t in texts]
        return self.pad_rows([r + [self.eos_id] for r in rows])

    # --- training (finetune.py) ---------------------------------------------------------------------
    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: bos, then the labels shifted right."""
        return self.model.prepare_decoder_input_ids_from_labels(labels)

    def decoder_states(self, batch: HFBatch, labels: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder layer's output [B, T, D] under teacher forcing. Read with forward hooks: the model's
        own `decoder_hidden_states` end with the final norm already applied, which `logprobs` applies."""
        states: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: states.append(out)) for layer in self.decoder.layers]
        try:
            self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values=batch.pixel_values,
                       decoder_input_ids=self.decoder_inputs(labels), use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        return states

    # --- ExitAdapter: encoder -----------------------------------------------------------------------
    def embed_streams(self, batch: HFBatch) -> Streams:
        embeds = self.text_encoder.embed_tokens(batch.input_ids)
        features = self.image_features(batch.pixel_values).to(embeds.device, embeds.dtype)
        is_img = batch.input_ids == self.image_token_id
        n_img = features.shape[1]
        if bool((is_img.sum(1) != n_img).any()):
            raise MueBenchError(f"T5Gemma 2 inputs need exactly {n_img} image tokens (id {self.image_token_id}) "
                                "per sample; use the model's processor")
        embeds = embeds.masked_scatter(is_img[..., None], features)
        # image positions first, then text, each in its original order: the engine's [image; text]
        order = torch.argsort((~is_img).to(torch.int8), dim=1, stable=True)
        h = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        self._positions = {"joint": order, "image": order[:, :n_img], "text": order[:, n_img:]}
        self._memo.clear()  # the previous batch's masks and tables
        return Streams(h[:, :n_img], h[:, n_img:], batch.attention_mask.gather(1, order[:, n_img:]).bool())

    def encoder_layer(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, queries: slice | None = None,
                      stream: str = "joint") -> torch.Tensor:
        pos = self._positions[stream]
        kind = self.enc_config.layer_types[layer]
        rope = self._memoised(("rope", stream, kind), pos, lambda: self.text_encoder.rotary_emb(h, pos, kind))
        mask = self._memoised(("mask", stream, kind), key_mask, lambda: self._encoder_mask(h, key_mask, pos, kind))
        return self._run_encoder_layer(layer, h, rope, mask, pos, queries)

    def encoder_layer_rows(self, layer: int, h: torch.Tensor, key_mask: torch.Tensor, rows: torch.Tensor,
                           queries: slice | None = None, stream: str = "joint") -> torch.Tensor:
        """`encoder_layer` on batch rows `rows` only (batch compaction), with those rows' own positions."""
        pos = self._positions[stream][rows]
        kind = self.enc_config.layer_types[layer]
        rope = self.text_encoder.rotary_emb(h, pos, kind)
        return self._run_encoder_layer(layer, h, rope, self._encoder_mask(h, key_mask, pos, kind), pos, queries)

    def _run_encoder_layer(self, layer: int, h: torch.Tensor, rope, mask, pos: torch.Tensor,
                           queries: slice | None) -> torch.Tensor:
        module = self.text_encoder.layers[layer]
        if queries is None:
            return module(h, rope, mask, pos)
        return _encoder_layer_for(module, h, rope, mask, queries)

    def _encoder_mask(self, h: torch.Tensor, key_mask: torch.Tensor, pos: torch.Tensor, kind: str):
        window = _joint_window(pos, self.enc_config.sliding_window) if kind == SLIDING else None
        return create_bidirectional_mask(config=self.enc_config, inputs_embeds=h, attention_mask=key_mask,
                                         and_mask_function=window)

    def encoder_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.text_encoder.norm(h)

    # --- ExitAdapter: decoder -----------------------------------------------------------------------
    def decoder_cache(self, enc_out: torch.Tensor) -> HFKVCache:
        self._enc_out = enc_out
        head_dim = self._head_dim

        def cross_kv(layer: int) -> KV:
            attn = self.decoder.layers[layer].self_attn  # merged attention: the same K/V projections
            return attn.k_norm(heads_view(attn.k_proj(enc_out), head_dim)), heads_view(attn.v_proj(enc_out), head_dim)

        return HFKVCache(self.dec_config, cross_kv)

    def decoder_embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        return self.decoder.embed_tokens(tokens[:, None])[:, 0]

    def decoder_layer(self, layer: int, h: torch.Tensor, cache: HFKVCache, enc_mask: torch.Tensor,
                      ) -> torch.Tensor:
        if layer == 0:  # every layer holds `step` positions before layer 0 appends: build the step's inputs
            self._step_inputs(h, cache, enc_mask)
        mask = self._merged_mask[self.dec_config.layer_types[layer]]
        return self._run_decoder_layer(layer, h, mask, cache, self._enc_out)

    def decoder_layer_rows(self, layer: int, h: torch.Tensor, rows: torch.Tensor, cache: HFKVCache,
                           enc_mask: torch.Tensor) -> torch.Tensor:
        if layer == 0:  # the step's masks are built for the whole batch, then indexed by row
            self._step_inputs(h.new_zeros(enc_mask.shape[0], h.shape[-1]), cache, enc_mask)
        mask = self._merged_mask[self.dec_config.layer_types[layer]][rows]
        sub = cache.rows(layer, rows)
        out = self._run_decoder_layer(layer, h, mask, sub, self._enc_out[rows])
        cache.append_rows(layer, rows, sub)
        return out

    def _run_decoder_layer(self, layer: int, h: torch.Tensor, mask: torch.Tensor, cache: HFKVCache,
                           enc_out: torch.Tensor) -> torch.Tensor:
        kind = self.dec_config.layer_types[layer]
        block = self.decoder.layers[layer]
        out = block(h[:, None], self._rope[kind], mask, self._pos, use_cache=True, encoder_hidden_states=enc_out,
                    **cache_kwarg(type(block).forward, cache.hf))
        return out[:, 0]

    def _step_inputs(self, h: torch.Tensor, cache: HFKVCache, enc_mask: torch.Tensor) -> None:
        """Positions, rotary tables and merged self+cross masks of this step, for all B rows of h [B, D]."""
        x = h[:, None]
        self._pos = torch.full((1, 1), cache.length(0), device=x.device, dtype=torch.long)
        kinds = set(self.dec_config.layer_types)
        self._rope = {k: self.decoder.rotary_emb(x, self._pos, k) for k in kinds}
        args = dict(config=self.dec_config, inputs_embeds=x, attention_mask=None, position_ids=self._pos,
                    allow_is_causal_skip=False, **cache_kwarg(create_causal_mask, cache.hf.self_attention_cache))
        cross = self._memoised(("cross", x.shape[0]), enc_mask, lambda: create_bidirectional_mask(
            config=self.dec_config, inputs_embeds=x, attention_mask=enc_mask, encoder_hidden_states=self._enc_out,
            allow_is_bidirectional_skip=False))
        build = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}
        self._merged_mask = {k: torch.cat([build[k](**args), cross], -1) for k in kinds}

    def propagate_kv(self, layer: int, h: torch.Tensor) -> KV:
        from transformers.models.t5gemma2.modeling_t5gemma2 import apply_rotary_pos_emb

        module = self.decoder.layers[layer]
        attn, x = module.self_attn, module.pre_self_attn_layernorm(h[:, None])
        k = attn.k_norm(heads_view(attn.k_proj(x), self._head_dim))
        cos, sin = self._rope[self.dec_config.layer_types[layer]]
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        return k, heads_view(attn.v_proj(x), self._head_dim)

    def logprobs(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(self.decoder.norm(h))
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.float().log_softmax(-1)


def _joint_window(pos: torch.Tensor, window: int):
    """The encoder's bidirectional sliding window (transformers' `sliding_window_mask_function` with
    is_causal=False), measured in joint positions: a stream's index i is the prompt's position pos[b, i]."""
    left, right = (window + 1) // 2, window // 2 + 1

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        dist = pos[batch_idx, q_idx] - pos[batch_idx, kv_idx]
        return ((dist >= 0) & (dist < left)) | ((dist < 0) & (-dist < right))

    return inner


def _encoder_layer_for(layer, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask, queries: slice,
                       ) -> torch.Tensor:
    """`T5Gemma2EncoderLayer.forward` (inference) for the positions `queries` only, keys/values from all of h.
    Must mirror transformers' layer; the adapter tests compare it with the full layer."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.t5gemma2.modeling_t5gemma2 import apply_rotary_pos_emb, eager_attention_forward

    attn = layer.self_attn
    x = layer.pre_self_attn_layernorm(h)
    cos, sin = rope
    q = attn.q_norm(heads_view(attn.q_proj(x[:, queries]), attn.head_dim))
    k = attn.k_norm(heads_view(attn.k_proj(x), attn.head_dim))
    v = heads_view(attn.v_proj(x), attn.head_dim)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, queries], sin[:, queries])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        mask = mask[:, :, queries]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = interface(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling, sliding_window=attn.sliding_window)
    out = attn.o_proj(out.reshape(*out.shape[:2], -1))
    r = h[:, queries] + layer.post_self_attn_layernorm(out)
    return r + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(r)))


def prompt(sample: Sample) -> str:
    """The user turn: a caption request, or the hypothesis as a yes/no/maybe question; a sample's own prompt wins."""
    return task_prompt(sample, CAPTION_PROMPT)


# --- randomly initialised models of the real class, built from config (no download) ----------------
# "tiny" is for tests (sliding window 4, so windows and the sliding KV cache are exercised within a few
# tokens); "270m" has the published google/t5gemma-2-270m-270m shapes (SigLIP-So400m at 896 px, a Gemma 3
# 270M encoder and decoder), for speed benchmarks in fixed-exit mode.
SHAPES = {
    "tiny": dict(text=dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=[SLIDING, FULL, SLIDING, FULL], query_pre_attn_scalar=16,
                           final_logit_softcapping=30.0, max_position_embeddings=512),
                 vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 mm_tokens_per_image=4),
    "270m": dict(text=dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                           layer_types=([SLIDING] * 5 + [FULL]) * 3, query_pre_attn_scalar=256,
                           max_position_embeddings=32768),
                 vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=896, patch_size=14),
                 mm_tokens_per_image=256),
}
T5Gemma2Adapter.shapes = SHAPES


def t5gemma2_config(shape: str, attn_implementation: str = "sdpa"):
    from transformers import SiglipVisionConfig, T5Gemma2Config
    from transformers.models.t5gemma2.configuration_t5gemma2 import (
        T5Gemma2DecoderConfig,
        T5Gemma2EncoderConfig,
        T5Gemma2TextConfig,
    )

    s = SHAPES[shape]
    vocab = s["text"]["vocab_size"]
    text = dict(s["text"], bos_token_id=2, eos_token_id=1, pad_token_id=0)
    boi, eoi, image = vocab - 8, vocab - 7, vocab - 6  # the real ones sit inside the vocabulary too
    encoder = T5Gemma2EncoderConfig(text_config=T5Gemma2TextConfig(**copy.deepcopy(text)),
                                    vision_config=SiglipVisionConfig(**s["vision"]),
                                    mm_tokens_per_image=s["mm_tokens_per_image"], boi_token_index=boi,
                                    eoi_token_index=eoi, image_token_index=image)
    cfg = T5Gemma2Config(encoder=encoder, decoder=T5Gemma2DecoderConfig(**text), image_token_index=image,
                         tie_word_embeddings=shape != "tiny")
    cfg._attn_implementation = attn_implementation
    for sub in (cfg.encoder, cfg.encoder.text_config, cfg.encoder.vision_config, cfg.decoder):
        sub._attn_implementation = attn_implementation
    return cfg


def random_t5gemma2(shape: str = "tiny", seed: int = 0, attn_implementation: str = "sdpa") -> T5Gemma2Adapter:
    """A randomly initialised T5Gemma2ForConditionalGeneration. transformers initialises the image projection
    to zero (the image would be invisible) and the norms to identity; the tiny one also gets random norms,
    small layer weights and an untied, large head, so that generations vary by input and by step and EOS
    comes at different steps."""
    from transformers import T5Gemma2ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5Gemma2ForConditionalGeneration(t5gemma2_config(shape, attn_implementation))
    with torch.no_grad():
        proj = model.model.encoder.multi_modal_projector.mm_input_projection_weight
        proj.normal_(0, proj.shape[0] ** -0.5)
        if shape == "tiny":
            for name, p in model.named_parameters():
                if "lm_head" in name:
                    p.normal_(0, 1.0)
                elif "embed_tokens" in name:
                    p.normal_(0, 0.3)
                elif "mm_input_projection" not in name:
                    p.normal_(0, 0.1 if p.dim() > 1 else 0.3)
            model.lm_head.out_proj.weight[model.config.decoder.eos_token_id] *= 2.0
    adapter = T5Gemma2Adapter(model)
    adapter.image_size = SHAPES[shape]["vision"]["image_size"]
    return adapter


def random_inputs(adapter: T5Gemma2Adapter, prompt_lengths: list[tuple[int, int]], seed: int = 0) -> HFBatch:
    """Right-padded prompts `bos w.. <boi> <image>x N <eoi> w..` with (before, after) words each, random pixels."""
    g = torch.Generator().manual_seed(seed)
    size = adapter.image_size or 32
    pixels = torch.randn(len(prompt_lengths), 3, size, size, generator=g)

    def words(n: int) -> list[int]:
        return torch.randint(3, min(adapter.boi_id, 100), (n,), generator=g).tolist()

    image = [adapter.boi_id] + [adapter.image_token_id] * adapter.n_image_tokens + [adapter.eoi_id]
    return adapter.pack([[adapter.bos_id] + words(a) + image + words(b) for a, b in prompt_lengths], pixels)
