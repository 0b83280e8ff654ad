"""Record golden SNLI-VE rankings: the MuE authors' SNLI-VE evaluation run on ModelScope's OFA.

Run inside the throwaway reference venv (see setup_env.sh), never the project's own:

    OMP_NUM_THREADS=1 /work/ofa-ref-venv/bin/python tools/ofa_reference/record_rank_golden.py \
        [--out tests/fixtures/ofa] [--only NAME] [--sims]

What it restates (github.com/Tangshengku/OFA b329878, the MuE authors' fork):
  * inputs: data/mm_data/snli_ve_dataset.py `__getitem__` (lines 135-171) with --add-caption and
    --prompt-type=prev_output (run_scripts/snli_ve/train_snli_ve_base_MuE.sh; evaluate.py reads both from the
    checkpoint's task config), and `pre_caption` of data/ofa_dataset.py (lines 68-84), transcribed below.
    ModelScope's visual-entailment preprocessor is not in the reference venv (only its OFA model code is), so
    this is a faithful transcription of the fork's dataset code, with one stand-in: the fixtures' vocabularies
    are toy ones (256 / 320 ids) without a BPE, so `encode_text` maps each whitespace-separated word w of the
    text to 4 + crc32(w) % (vocab - 4), the id mue-bench's OFA adapter gives a word when its checkpoint has no
    tokenizer (models/ofa/adapter.py `_words`). The text, the cleaning, the truncation to max_src_length words,
    <s> / </s> and the decoder prompt are the fork's.
  * scoring: utils/eval_utils.py `eval_snli_ve` (lines 206-262) line for line: the encoder output repeated per
    candidate, valid_prev_items = decoder_prompt + answer, valid_tgt_items = decoder_prompt[1:] + answer + </s>,
    constraint masks from the answer trie (tasks/mm_tasks/snli_ve.py build_model, utils/trie.py), fairseq's
    collate_tokens, logits masked to -inf off the trie, log-softmax, the target log-probs summed with padding and
    fully masked (prompt) positions at 0, argmax over candidates.
  * exits: the authors' split MuE encoder (record_parity_golden.MuEEncoder: text stream, then the image stream
    with its absolute bias only; thresholds above 1 here, so no encoder exit) and the authors' decoder loop in
    its non-incremental form (models/ofa/unify_transformer.py lines 2175-2216): after each layer
    cos(normalize(x.view(1, -1)), normalize(prev.view(1, -1))) over the whole pass (every row and position,
    padding included) against the raw decoder threshold (no schedule: sequence_generator.py is not on this path);
    `break` keeps that layer's output; exit layer = idx + 1; then the final LayerNorm and the output projection.
    ModelScope's decoder pieces (position biases, masks, layers) are called as its own OFADecoder.forward calls
    them; with nothing exiting the loop is checked equal to ModelScope's decoder forward.

Writes tests/fixtures/ofa/<name>/rank_goldens.json: the prompts (raw texts and ids), then per answer set, setting
and batch the candidates' scores, the chosen answer, the exit layer and the pass's similarities.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zlib
from collections import OrderedDict, defaultdict

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import record_golden as rg  # noqa: E402
import record_parity_golden as rp  # noqa: E402
from modelscope.models.multi_modal.ofa.modeling_ofa import _expand_mask, new_arange  # noqa: E402

BOS, PAD, EOS = rg.BOS, rg.PAD, rg.EOS
MAX_SRC_LENGTH = 80  # train_snli_ve_base_MuE.sh max_src_length
N_SPECIAL = 4

# SNLI-VE rows as the fork's TSV holds them (selected_cols 0,2,3,4,5: uniq_id, image, hypothesis, caption, label);
# the image is an index into the fixture's images. Texts exercise pre_caption: case, leading punctuation, '-',
# '/', <person>, runs of spaces, a trailing newline.
ROWS = [
    ("r0", 0, "Two-dogs  PLAY outside.", "A man/woman walks two dogs\n", "entailment"),
    ("r1", 1, "...The <person> is asleep", "The person rides a bike-path", "contradiction"),
    ("r2", 2, "kids eat", "Several kids at a table; food on plates", "neutral"),
]
# Longer texts for the inputs only (no model run: the fixtures' 64 positions would not hold them): the fork
# keeps max_src_length words of each sentence.
LONG = [
    ("long0", " ".join(f"Word{i}" for i in range(95)), " ".join(f"cap-{i}" for i in range(83)), "neutral"),
]
# Answer sets: SNLI-VE's (one token each, as BPE spells them), and one of different lengths with a shared
# prefix, so that the trie and the candidates' padding are exercised.
ANSWER_SETS = OrderedDict(snli=["no", "yes", "maybe"], multi=["not", "not at all", "maybe so"])
# Decoder thresholds per config (raw, no schedule): None = no exit; the two others were read off --sims (the
# pass's similarities with nothing exiting) so that the passes exit at different layers (rn50: 1 and 2 under
# 0.495, 1 under 0.45; rn101: 2 and 3 under 0.73, 1 and 2 under 0.45), every decision at least 2e-3 from its
# threshold.
DEC_TAUS = OrderedDict(rn50_plain=[None, 0.495, 0.45], rn101_normformer=[None, 0.73, 0.45])


# --- the fork's dataset code (transcribed) ----------------------------------------------------------------
def pre_caption(caption: str, max_words: int | None = None) -> str:
    """data/ofa_dataset.py OFADataset.pre_caption."""
    caption = caption.lower().lstrip(",.!?*#:;~").replace('-', ' ').replace('/', ' ').replace('<person>', 'person')
    caption = re.sub(r"\s{2,}", ' ', caption)
    caption = caption.rstrip('\n')
    caption = caption.strip(' ')
    caption_words = caption.split(' ')
    if max_words is not None and len(caption_words) > max_words:
        caption = ' '.join(caption_words[:max_words])
    return caption


def stand_in_bpe(text: str, vocab: int) -> list[int]:
    """encode_text's BPE + dictionary lookup, stood in for by one id per whitespace-separated word (docstring)."""
    return [N_SPECIAL + zlib.crc32(w.encode()) % (vocab - N_SPECIAL) for w in text.split()]


def snli_ve_item(hypothesis: str, caption: str, vocab: int, add_caption: bool = True,
                 prompt_type: str = "prev_output") -> tuple[str, list[int], list[int]]:
    """snli_ve_dataset.py __getitem__ lines 150-171: (source text, src_item, decoder_prompt)."""
    hypothesis = pre_caption(hypothesis, MAX_SRC_LENGTH)
    text = ' does the image describe " {} "?'.format(hypothesis)  # noqa: UP032 (the fork's line)
    if add_caption:
        caption = pre_caption(caption, MAX_SRC_LENGTH)
        text = ' can image and text1 " {} " imply text2 " {} "?'.format(caption, hypothesis)  # noqa: UP032
    src_item = [BOS, *stand_in_bpe(text, vocab), EOS]
    decoder_prompt = {"none": [BOS], "src": src_item, "prev_output": src_item[:-1]}[prompt_type]
    return text, src_item, decoder_prompt


class TreeNode:
    """utils/trie.py."""

    def __init__(self):
        self.child = defaultdict(TreeNode)


class Trie:
    """utils/trie.py."""

    def __init__(self, eos):
        self.root = TreeNode()
        self.eos = eos

    def insert(self, word):
        cur = self.root
        for c in word:
            cur = cur.child[c]

    def get_next_layer(self, word):
        cur = self.root
        for c in word:
            cur = cur.child.get(c)
            if cur is None:
                return [self.eos]
        return list(cur.child.keys())


def answer_items(answers: list[str], vocab: int):
    """snli_ve.py build_model: each answer's ids (' ' + answer, no </s>) and its constraint mask rows."""
    items = [torch.tensor(stand_in_bpe(" " + a, vocab), dtype=torch.long) for a in answers]
    trie = Trie(EOS)
    for item in items:
        trie.insert([BOS] + item.tolist() + [EOS])
    masks = []
    for item in items:
        mask = torch.zeros((len(item) + 1, vocab)).bool()
        for i in range(len(item) + 1):
            mask[i][trie.get_next_layer([BOS] + item[:i].tolist())] = True
        masks.append(mask)
    return items, masks


def collate_tokens(values, pad_idx):
    """fairseq data_utils.collate_tokens, right padding (1-d and 2-d values)."""
    size = max(v.size(0) for v in values)
    shape = (len(values), size) if values[0].dim() == 1 else (len(values), size, values[0].size(1))
    res = values[0].new(*shape).fill_(pad_idx)
    for i, v in enumerate(values):
        res[i][: len(v)].copy_(v)
    return res


# --- the authors' decoder loop, non-incremental, on ModelScope's pieces -----------------------------------
def decoder_pass(dec, input_ids, enc_out, enc_padding_mask, src_pos_embed, tau: float | None):
    """ModelScope's OFADecoder.forward (no cache, no image codes) with the fork's exit test after every layer.
    Returns (logits [R, T, V], exit layer, similarities)."""
    attention_mask = input_ids.eq(PAD) if input_ids.eq(PAD).any() else None  # OFAModel.forward
    encoder_attention_mask = _expand_mask(enc_padding_mask, enc_out.dtype, input_ids.shape[-1])
    tgt_pos_embed = dec.embed_positions(new_arange(input_ids))
    self_abs = dec.get_pos_info(tgt_pos_embed, use_image=False)
    cross_abs = dec.get_pos_info(tgt_pos_embed, src_pos_embed=src_pos_embed)
    cross_abs = cross_abs.reshape(-1, *cross_abs.size()[-2:])
    x = dec.embed_scale * dec.embed_tokens(input_ids)
    if dec.layernorm_embedding is not None:
        x = dec.layernorm_embedding(x)
    mask = dec._prepare_decoder_attention_mask(attention_mask, input_ids.shape, x.dtype, 0)
    prev, sims = x, []
    for idx, layer in enumerate(dec.layers):
        bias = self_abs.clone() + dec.get_rel_pos_bias(input_ids, idx).unsqueeze(0)
        bias = bias.reshape(-1, *bias.size()[-2:])
        x = layer(x, attention_mask=mask, encoder_hidden_states=enc_out, encoder_attention_mask=encoder_attention_mask,
                  self_attn_bias=bias, cross_attn_bias=cross_abs)[0]
        # unify_transformer.py: the cosine of the whole T x B x C tensor (time-major there; the order of the
        # entries does not change a cosine)
        sim = float(rp.cosine(x.transpose(0, 1), prev.transpose(0, 1)))
        sims.append(sim)
        if tau is not None and sim > tau:
            break
        prev = x
    if dec.layer_norm is not None:
        x = dec.layer_norm(x)
    return dec.output_projection(x), idx + 1, sims


def eval_snli_ve(model, items, masks, decoder_prompts, encoder_out, tau):
    """utils/eval_utils.py eval_snli_ve, one answer chunk (valid_batch_size 20 > the candidates)."""
    eos_item = torch.tensor([EOS])
    valid_size = len(items)
    valid_tgt_items = [torch.cat([torch.tensor(p[1:]), a, eos_item]) for p in decoder_prompts for a in items]
    valid_prev_items = [torch.cat([torch.tensor(p), a]) for p in decoder_prompts for a in items]
    valid_constraint_mask_items = [
        torch.cat([torch.zeros(len(p) - 1, m.size(1)).bool(), m], dim=0) for p in decoder_prompts for m in masks]
    valid_tgt = collate_tokens(valid_tgt_items, PAD)
    valid_prev_output = collate_tokens(valid_prev_items, PAD)
    valid_constraint_masks = collate_tokens(valid_constraint_mask_items, PAD)
    enc_out = encoder_out.last_hidden_state.repeat_interleave(valid_size, dim=0)
    enc_pad = encoder_out.padding_mask.repeat_interleave(valid_size, dim=0)
    pos = encoder_out.position_embedding.repeat_interleave(valid_size, dim=0)
    logits, exit_layer, sims = decoder_pass(model.decoder, valid_prev_output, enc_out, enc_pad, pos, tau)
    logits.masked_fill_(~valid_constraint_masks, -float("inf"))
    lprobs = F.log_softmax(logits.float(), dim=-1)  # get_normalized_probs: utils.log_softmax, float32
    scores = lprobs.gather(dim=-1, index=valid_tgt.unsqueeze(-1)).squeeze(-1)
    scores = scores.masked_fill(valid_tgt.eq(PAD), 0)
    scores = scores.masked_fill((~valid_constraint_masks).all(2), 0)
    scores = scores.sum(1).view(-1, valid_size)
    return scores, scores.argmax(1).tolist(), exit_layer, sims, valid_prev_output


def self_check(model, spec, images, prompts_by_row) -> None:
    """With nothing exiting, the loop's logits are ModelScope's own decoder forward's."""
    vocab = spec["ofa"]["vocab_size"]
    items, _ = answer_items(ANSWER_SETS["multi"], vocab)
    src = rg.right_pad([prompts_by_row[r[0]][1] for r in ROWS])
    enc = rp.MuEEncoder(model, 2.0, 2.0, lambda: rp.Trace())(
        input_ids=src, patch_images=images, patch_masks=torch.ones(len(src), dtype=torch.bool))
    prev = collate_tokens([torch.cat([torch.tensor(prompts_by_row[r[0]][2]), a]) for r in ROWS for a in items], PAD)
    n = len(items)
    enc_out = enc.last_hidden_state.repeat_interleave(n, 0)
    pad = enc.padding_mask.repeat_interleave(n, 0)
    pos = enc.position_embedding.repeat_interleave(n, 0)
    ours, _, _ = decoder_pass(model.decoder, prev, enc_out, pad, pos, None)
    theirs = model.decoder(input_ids=prev, attention_mask=prev.eq(PAD), encoder_hidden_states=enc_out,
                           encoder_attention_mask=_expand_mask(pad, enc_out.dtype, prev.shape[-1]),
                           src_pos_embed=pos).last_hidden_state
    real = prev.ne(PAD)
    diff = (ours[real] - theirs[real]).abs().max().item()
    assert diff < 1e-5, f"the exit loop without exits differs from ModelScope's decoder by {diff}"


def record(name: str, spec: dict, out_root: str, show_sims: bool) -> None:
    model = rp.load_model(name, spec)
    vocab, n_layers = spec["ofa"]["vocab_size"], spec["ofa"]["decoder_layers"]
    images = rg.normalise(rg.make_images(max(r[1] for r in ROWS) + 1, spec["image_size"], spec["seed"] + 17))
    prompts = OrderedDict()
    for uid, _, hyp, cap, _ in ROWS:
        prompts[uid] = snli_ve_item(hyp, cap, vocab)
    longs = OrderedDict((uid, snli_ve_item(hyp, cap, vocab)) for uid, hyp, cap, _ in LONG)
    with torch.no_grad():
        self_check(model, spec, images, prompts)
    batches = OrderedDict((f"single{b}", [b]) for b in range(len(ROWS)))
    batches["batch3"] = list(range(len(ROWS)))

    sets = OrderedDict()
    for set_name, answers in ANSWER_SETS.items():
        items, masks = answer_items(answers, vocab)
        runs = OrderedDict()
        for tau in DEC_TAUS[name]:
            per_batch = OrderedDict()
            for bname, rows in batches.items():
                src = rg.right_pad([prompts[ROWS[b][0]][1] for b in rows])
                with torch.no_grad():
                    enc = rp.MuEEncoder(model, 2.0, 2.0, lambda: rp.Trace())(
                        input_ids=src, patch_images=images[[ROWS[b][1] for b in rows]],
                        patch_masks=torch.ones(len(rows), dtype=torch.bool))
                    scores, choice, exit_layer, sims, _ = eval_snli_ve(
                        model, items, masks, [prompts[ROWS[b][0]][2] for b in rows], enc, tau)
                per_batch[bname] = {"rows": rows, "scores": [[round(float(s), 6) for s in r] for r in scores],
                                    "choice": choice, "answers": [answers[c] for c in choice],
                                    "exit_layer": exit_layer, "sims": [round(s, 7) for s in sims],
                                    "min_margin": None if tau is None else
                                    round(min(abs(s - tau) for s in sims[:n_layers - 1]), 7)}
                if show_sims:
                    print(f"{name} {set_name} tau={tau} {bname}: exit {exit_layer} sims {sims} choice {choice}")
            runs["none" if tau is None else repr(tau)] = {"tau_dec": tau, "batches": per_batch}
        sets[set_name] = {"answers": answers, "answer_ids": [i.tolist() for i in items], "runs": runs}

    doc = OrderedDict(
        reference={
            "implementation": "the MuE authors' SNLI-VE evaluation (github.com/Tangshengku/OFA b329878: "
                              "snli_ve_dataset.py with --add-caption --prompt-type=prev_output, eval_utils.py "
                              "eval_snli_ve, unify_transformer.py's decoder exit loop without a cache) on modelscope "
                              "1.40.2's OFA modules",
            "script": "tools/ofa_reference/record_rank_golden.py",
            "torch": torch.__version__,
            "mode": "eval, float32, CPU, torch.no_grad, 1 thread",
            "bpe": "stand-in: each whitespace-separated word w -> 4 + crc32(w) % (vocab - 4)",
        },
        config_name=name,
        settings={"add_caption": True, "prompt_type": "prev_output", "max_src_length": MAX_SRC_LENGTH,
                  "encoder": "split streams (the authors'), image stream absolute bias only, no encoder exit",
                  "similarity": "one cosine over the whole pass (every row and position, padding included) per layer",
                  "threshold": "raw tau_dec, no schedule"},
        rows=[{"uniq_id": uid, "image": img, "hypothesis": hyp, "caption": cap, "label": label,
               "source_text": prompts[uid][0], "source_ids": prompts[uid][1], "decoder_prompt": prompts[uid][2]}
              for uid, img, hyp, cap, label in ROWS],
        inputs_only=[{"uniq_id": uid, "hypothesis": hyp, "caption": cap, "label": label,
                      "source_text": longs[uid][0], "source_ids": longs[uid][1], "decoder_prompt": longs[uid][2]}
                     for uid, hyp, cap, label in LONG],
        answer_sets=sets,
    )
    with open(os.path.join(out_root, name, "rank_goldens.json"), "w") as f:
        f.write(rp.compact_json(doc) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "ofa"))
    ap.add_argument("--only", default=None)
    ap.add_argument("--sims", action="store_true", help="print every pass's similarities (to choose DEC_TAUS)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, spec in rg.CONFIGS.items():
        if args.only and name != args.only:
            continue
        record(name, spec, args.out, args.sims)


if __name__ == "__main__":
    main()
