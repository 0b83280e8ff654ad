"""A transformers checkpoint's own decoding settings (its `generation_config.json`), read into the engine's.

Why: "no exit equals the model" must hold against the model as it ships, and checkpoints ship decoding
settings (Florence-2: forced BOS and EOS tokens, beams, an n-gram ban) that `generate()` applies whenever
nobody overrides them. Each setting is either reproduced by the engine's search (`SUPPORTED`), known not to
change greedy or beam output (`INERT`, or a neutral value), or refused in one line at load: silently
dropping one would make every "no exit" row differ from the model's own output.

In transformers 5 a generation config leaves what it does not set at None (global defaults fill in later),
so the settings a checkpoint provides are exactly its non-None fields.
"""

from __future__ import annotations

from typing import Any

from mue_bench.errors import SpecError

# generation_config.json field -> the DecodingConfig field it becomes (see `settings`)
SUPPORTED = ("num_beams", "max_new_tokens", "max_length", "min_new_tokens", "min_length", "no_repeat_ngram_size",
             "length_penalty", "early_stopping", "forced_bos_token_id", "forced_eos_token_id")
# the special tokens, which the adapters read themselves
TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# read by generate() only with do_sample=True, which is refused
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")
# bookkeeping, outputs and caches: no effect on the tokens greedy or beam search picks
INERT = ("_from_model_config", "transformers_version", "use_cache", "output_attentions", "output_hidden_states",
         "output_scores", "output_logits", "return_dict_in_generate", "cache_implementation", "cache_config",
         "max_cache_len", "compile_config", "disable_compile", "prefill_chunk_size", "low_memory",
         "continuous_batching_config", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
         "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind")
# values that switch a logits processor or a search mode off
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "do_sample": (False,), "repetition_penalty": (1.0,), "encoder_repetition_penalty": (1.0,),
    "encoder_no_repeat_ngram_size": (0,), "num_beam_groups": (1,), "diversity_penalty": (0.0,),
    "num_return_sequences": (1,), "remove_invalid_values": (False,), "renormalize_logits": (False,),
    "guidance_scale": (1.0,), "bad_words_ids": ([],), "suppress_tokens": ([],), "begin_suppress_tokens": ([],),
    "force_words_ids": ([],), "constraints": ([],), "sequence_bias": ({},), "token_healing": (False,),
}


def provided(generation_config) -> dict[str, Any]:
    """The fields a generation config sets (non-None), custom entries included."""
    return {k: v for k, v in generation_config.to_dict().items() if v is not None}


def check(generation_config, source: str) -> None:
    """Refuse, in one line naming the field, any setting the engine's search would not reproduce."""
    fields = provided(generation_config)
    sampling = fields.get("do_sample") is True
    for name, value in fields.items():
        if name in SUPPORTED or name in TOKENS or name in INERT or (name in SAMPLING and not sampling):
            continue
        if name in NEUTRAL and value in NEUTRAL[name]:
            continue
        raise SpecError(f"{source}: generation_config.json sets {name} = {value!r}, which mue-bench's greedy and "
                        "beam search cannot reproduce; set decoding.generation_config = \"ignore\" to decode "
                        "without the checkpoint's settings")


def settings(generation_config) -> dict[str, Any]:
    """The supported fields as DecodingConfig keyword arguments.

    Lengths: the engine's max_len counts generated tokens; transformers' max_length and min_length count the
    decoder's input, which starts with the one start token, so max_length N generates N - 1 tokens. A
    max_new_tokens (min_new_tokens) takes precedence over max_length (min_length), as in generate().
    """
    f = provided(generation_config)
    out: dict[str, Any] = {}
    if "num_beams" in f:
        out["num_beams"] = int(f["num_beams"])
    if "max_new_tokens" in f:
        out["max_len"] = int(f["max_new_tokens"])
    elif "max_length" in f:
        out["max_len"] = max(int(f["max_length"]) - 1, 1)
    if "min_new_tokens" in f:
        out["min_new_tokens"] = int(f["min_new_tokens"])
    elif "min_length" in f:
        out["min_new_tokens"] = max(int(f["min_length"]) - 1, 0)
    if "no_repeat_ngram_size" in f:
        out["no_repeat_ngram"] = int(f["no_repeat_ngram_size"])
    if "length_penalty" in f:
        out["length_penalty"] = float(f["length_penalty"])
    if "early_stopping" in f:
        early = f["early_stopping"]
        out["early_stopping"] = early if early == "never" else bool(early)
    if "forced_bos_token_id" in f:
        out["forced_bos"] = int(f["forced_bos_token_id"])
    if "forced_eos_token_id" in f:
        eos = f["forced_eos_token_id"]
        out["forced_eos"] = (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)
    return out
