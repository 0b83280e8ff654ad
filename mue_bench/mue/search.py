"""Greedy and beam search over a `Stepper`, the one place decoding decisions are made.

Why one search loop for two purposes: the built-in model's plain `generate()` and the MuE engine differ
only in how the next-token log-probs are computed (full recompute vs layer-skipping with a KV cache).
Sharing the search makes "every threshold above 1 gives identical tokens" a test of the exit engine
alone. Rows are laid out sample-major: row = sample * num_beams + beam.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch


class Stepper(Protocol):
    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return next-token log-probs [rows, vocab].

        `alive` marks rows whose sample is still decoding; the others' outputs are ignored.
        """

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search moved rows: row r now continues what row index[r] held."""


class RecomputeStepper:
    """A plain model's reference decoding: no cache, the whole prefix re-run every step. `last_logprobs` maps
    the prefix [rows, t] (beams expanded) to the next-token log-probs of its last position."""

    def __init__(self, last_logprobs: Callable[[torch.Tensor], torch.Tensor]):
        self.last_logprobs = last_logprobs
        self.history: torch.Tensor | None = None

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, None]
        self.history = tokens if self.history is None else torch.cat([self.history, tokens], 1)
        return self.last_logprobs(self.history)

    def reorder(self, index: torch.Tensor) -> None:
        assert self.history is not None
        self.history = self.history[index]


@dataclass(frozen=True)
class DecodingConfig:
    bos_id: int
    eos_id: int
    pad_id: int
    num_beams: int = 1
    max_len: int = 16
    no_repeat_ngram: int = 0
    # Beam search semantics of the model's own generation: "fairseq" (the built-in model), "ofa" (fairseq's
    # SequenceGenerator exactly, as OFA's ModelScope and fairseq code run it: see `_fairseq_rules`) or "hf"
    # (transformers `generate()`), so that "no exit" is token-identical to each model's own output.
    beam_style: Literal["fairseq", "ofa", "hf"] = "fairseq"
    length_penalty: float = 1.0  # hf only: finished score = sum log p / generated_length ** length_penalty
    early_stopping: bool | Literal["never"] = False  # hf only, as in transformers' GenerationConfig
    # Never end early: every sample generates max_len tokens (a forced EOS is dropped). For speed benchmarks on
    # random weights, where output lengths would otherwise differ between grid points and distort every saving.
    ignore_eos: bool = False
    extra_eos: tuple[int, ...] = ()  # further ids that end a sequence (a generation config's eos list)
    # Closed-set answers (SNLI-VE's yes / no / maybe): each a token sequence ending with EOS. When given, a
    # row may only continue one of them, and each step's log-probs are renormalised over what it may emit,
    # as OFA masks the logits to its answer trie before the softmax (utils/eval_utils.py, eval_snli_ve).
    answers: tuple[tuple[int, ...], ...] = ()
    # What a transformers generation config may add (logits_process.py, applied in generate()'s order after
    # the n-gram ban): EOS is banned for the first `min_new_tokens` steps; the first generated token is
    # `forced_bos`; the last one (step max_len - 1, where generate() reaches max_length) is one of `forced_eos`.
    min_new_tokens: int = 0
    forced_bos: int | None = None
    forced_eos: tuple[int, ...] = ()

    @property
    def eos(self) -> tuple[int, ...]:
        return (self.eos_id, *self.extra_eos)


def _ban_repeats(logprobs: torch.Tensor, seqs: list[list[int]], n: int, rows: list[int]) -> None:
    """Forbid any token that would complete an n-gram already present in the row's sequence."""
    if n <= 0:
        return
    for r in rows:
        seq = seqs[r]
        if len(seq) < n:
            continue
        prefix = tuple(seq[len(seq) - n + 1:])
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
        if banned:
            logprobs[r, banned] = float("-inf")


def allowed_next(answers: tuple[tuple[int, ...], ...], prefix: Sequence[int]) -> list[int]:
    """The answer trie: the tokens that continue `prefix` (answer tokens so far) towards one of the answers (none
    once it left them all)."""
    n, prefix = len(prefix), tuple(prefix)
    return sorted({a[n] for a in answers if len(a) > n and a[:n] == prefix})


def allowed_mask(allowed: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """[P, V] True at position p's allowed tokens `allowed[p]` (the trie's constraint mask), for scores `like`."""
    keep = torch.zeros_like(like, dtype=torch.bool)
    for p, ids in enumerate(allowed):
        keep[p, ids] = True
    return keep


def _keep_answers(logprobs: torch.Tensor, seqs: list[list[int]], answers: tuple[tuple[int, ...], ...],
                  rows: list[int]) -> None:
    """Mask every token off the answer trie and renormalise, which equals a softmax over the allowed logits."""
    for r in rows:
        allowed = allowed_next(answers, seqs[r][1:])
        keep = torch.full_like(logprobs[r], float("-inf"))
        if allowed:
            keep[allowed] = logprobs[r, allowed]
            keep[allowed] -= torch.logsumexp(keep[allowed], 0)
        logprobs[r] = keep


def _force(logprobs: torch.Tensor, tokens: list[int]) -> None:
    """Only `tokens` stay possible, each with log-prob 0 (transformers' forced-token processors)."""
    logprobs.fill_(float("-inf"))
    logprobs[:, tokens] = 0.0


def _constrain(logprobs: torch.Tensor, seqs: list[list[int]], cfg: DecodingConfig, rows: list[int], step: int,
               ) -> None:
    _ban_repeats(logprobs, seqs, cfg.no_repeat_ngram, rows)
    if cfg.ignore_eos or step < cfg.min_new_tokens:
        logprobs[:, list(cfg.eos)] = float("-inf")
    if cfg.beam_style == "ofa":
        _fairseq_rules(logprobs, cfg, step)
    if cfg.forced_bos is not None and step == 0:
        _force(logprobs, [cfg.forced_bos])
    if cfg.forced_eos and step == cfg.max_len - 1 and not cfg.ignore_eos:
        _force(logprobs, list(cfg.forced_eos))
    if cfg.answers:
        _keep_answers(logprobs, seqs, cfg.answers, rows)


def _fairseq_rules(logprobs: torch.Tensor, cfg: DecodingConfig, step: int) -> None:
    """fairseq SequenceGenerator's constraints (min_len 1, max_len_b = max_len - 1): pad is never chosen, the
    first token is not EOS, and the last step may only end the sequence (with ignore_eos: every sample runs
    to max_len and ends there). The third rule of "ofa" is in `_beam`: EOS finishes a hypothesis only from
    the top num_beams candidates."""
    logprobs[:, cfg.pad_id] = float("-inf")
    if step == 0:
        logprobs[:, cfg.eos_id] = float("-inf")
    if step == cfg.max_len - 1:
        eos = logprobs[:, cfg.eos_id].clone()
        logprobs.fill_(float("-inf"))
        logprobs[:, cfg.eos_id] = torch.where(torch.isinf(eos) & cfg.ignore_eos, 0.0, eos)


def _is_eos(tokens: torch.Tensor, cfg: DecodingConfig) -> torch.Tensor:
    if not cfg.extra_eos:
        return tokens == cfg.eos_id
    return torch.isin(tokens, torch.tensor(cfg.eos, device=tokens.device))


def generate(stepper: Stepper, batch_size: int, cfg: DecodingConfig, device: torch.device) -> list[list[int]]:
    """Token ids per sample, without the start token, ending with EOS unless cut by max_len."""
    if cfg.num_beams == 1:
        return _greedy(stepper, batch_size, cfg, device)
    if cfg.beam_style == "hf":
        return _beam_hf(stepper, batch_size, cfg, device)
    return _beam(stepper, batch_size, cfg, device)


def _greedy(stepper: Stepper, n: int, cfg: DecodingConfig, device: torch.device) -> list[list[int]]:
    seqs = [[cfg.bos_id] for _ in range(n)]
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens = torch.full((n,), cfg.bos_id, dtype=torch.long, device=device)
    for t in range(cfg.max_len):
        logprobs = stepper.step(tokens, ~finished).float()
        alive_rows = (~finished).nonzero().flatten().tolist()
        _constrain(logprobs, seqs, cfg, alive_rows, t)
        tokens = torch.where(finished, cfg.pad_id, logprobs.argmax(-1))
        for r in alive_rows:
            seqs[r].append(int(tokens[r]))
        finished |= _is_eos(tokens, cfg)
        if bool(finished.all()):
            break
    return [s[1:] for s in seqs]


def _beam(stepper: Stepper, n: int, cfg: DecodingConfig, device: torch.device) -> list[list[int]]:
    """Beam search that finalises a sample once it holds num_beams finished hypotheses.

    Scores are summed log-probs normalised by length (tokens including EOS) when a hypothesis ends.
    """
    k = cfg.num_beams
    rows = n * k
    seqs = [[cfg.bos_id] for _ in range(rows)]
    scores = torch.zeros(n, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((rows,), cfg.bos_id, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(cfg.max_len):
        alive = torch.tensor([not done[r // k] for r in range(rows)], device=device)
        logprobs = stepper.step(tokens, alive).float()
        alive_rows = [r for r in range(rows) if not done[r // k]]
        _constrain(logprobs, seqs, cfg, alive_rows, t)
        vocab = logprobs.shape[-1]
        cand = (scores.reshape(rows, 1) + logprobs).reshape(n, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=-1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        src = list(range(rows))
        next_tokens = [cfg.pad_id] * rows
        next_scores = scores.clone()
        for b in range(n):
            if done[b]:
                continue
            slot = 0
            for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                if score == float("-inf"):
                    break
                beam, tok = divmod(idx, vocab)
                row = b * k + beam
                if tok in cfg.eos and rank >= k and cfg.beam_style == "ofa":
                    continue  # fairseq finishes only EOS among the top k and continues the best k others
                if tok in cfg.eos:
                    finished[b].append((score / (t + 1), seqs[row][1:] + [tok]))
                    if len(finished[b]) == k:
                        break
                    continue
                src[b * k + slot] = row
                next_tokens[b * k + slot] = tok
                next_scores[b, slot] = score
                slot += 1
                if slot == k:
                    break
            if len(finished[b]) >= k:
                done[b] = True
            else:
                next_scores[b, slot:] = float("-inf")
        if all(done):
            break
        index = torch.tensor(src, device=device)
        stepper.reorder(index)
        seqs = [seqs[s] + [next_tokens[r]] for r, s in enumerate(src)]
        scores = next_scores
        tokens = torch.tensor(next_tokens, device=device)
    for b in range(n):
        if not done[b]:
            length = len(seqs[b * k]) - 1
            for beam in range(k):
                s = float(scores[b, beam])
                if s > float("-inf"):
                    finished[b].append((s / max(length, 1), seqs[b * k + beam][1:]))
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


_NEG = -1.0e9  # transformers' "impossible" score; kept as is so sums and ties match its arithmetic


def _beam_hf(stepper: Stepper, n: int, cfg: DecodingConfig, device: torch.device) -> list[list[int]]:
    """transformers' beam search (GenerationMixin._beam_search, v5), restated over a Stepper.

    Differences from `_beam` that change outputs: 2k candidates per step, of which only the top k ranks may
    finish; a finished hypothesis is scored by generated length (EOS included) ** length_penalty; at the
    last step every top-k candidate finishes; a sample stops once no running beam can beat its worst
    finished one (`early_stopping=False`), or once it has k finished ones (`early_stopping=True`).
    """
    k, lp = cfg.num_beams, cfg.length_penalty
    rows = n * k
    seqs = [[cfg.bos_id] for _ in range(rows)]
    run_scores = torch.zeros(n, k, device=device)
    run_scores[:, 1:] = _NEG
    fin_scores = torch.full((n, k), _NEG, device=device)
    fin_flags = torch.zeros(n, k, dtype=torch.bool, device=device)
    fin_seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(n)]
    open_ = torch.ones(n, dtype=torch.bool, device=device)  # the early-stop heuristic is unsatisfied
    top_ranks = torch.arange(2 * k, device=device) < k
    offsets = torch.arange(n, device=device)[:, None] * k
    tokens = torch.full((rows,), cfg.bos_id, dtype=torch.long, device=device)
    for t in range(cfg.max_len):
        sample_alive = open_ & ~(fin_flags.all(-1) & (cfg.early_stopping is True))
        logprobs = stepper.step(tokens, sample_alive.repeat_interleave(k)).float()
        _constrain(logprobs, seqs, cfg, list(range(rows)), t)
        vocab = logprobs.shape[-1]
        cand = (logprobs.view(n, k, vocab) + run_scores[:, :, None]).reshape(n, k * vocab)
        top_lp, top_idx = cand.topk(2 * k)
        src = top_idx // vocab + offsets  # [n, 2k] source rows
        tok = top_idx % vocab
        hits = _is_eos(tok, cfg) | (t + 1 >= cfg.max_len)
        cand_seqs = [[seqs[r] + [x] for r, x in zip(rs, xs)] for rs, xs in zip(src.tolist(), tok.tolist())]

        run_lp = top_lp + hits.float() * _NEG
        keep = run_lp.topk(k).indices
        run_scores = run_lp.gather(1, keep)

        fin_cand = top_lp / ((t + 1) ** lp)
        fin_cand = fin_cand + (fin_flags.all(-1, keepdim=True) & (cfg.early_stopping is True)).float() * _NEG
        fin_cand = fin_cand + (~open_[:, None]).float() * _NEG
        just = hits & top_ranks[None, :]
        fin_cand = fin_cand + (~just) * _NEG
        best = torch.cat([fin_scores, fin_cand], 1).topk(k).indices
        fin_scores = torch.cat([fin_scores, fin_cand], 1).gather(1, best)
        fin_flags = torch.cat([fin_flags, just], 1).gather(1, best)
        fin_seqs = [[(old + new)[i] for i in idx] for old, new, idx in zip(fin_seqs, cand_seqs, best.tolist())]

        index = src.gather(1, keep).flatten()
        stepper.reorder(index)
        kept = keep.tolist()
        seqs = [cand_seqs[b][i] for b in range(n) for i in kept[b]]
        tokens = tok.gather(1, keep).flatten()

        length = cfg.max_len if cfg.early_stopping == "never" and lp > 0 else t + 1
        best_running = run_scores[:, :1] / (length ** lp)
        worst_finished = torch.where(fin_flags, fin_scores.min(1, keepdim=True).values, _NEG)
        open_ = open_ & (best_running > worst_finished).any(-1)
        if not bool(open_.any()) or bool(fin_flags.all() & (cfg.early_stopping is True)) or bool(hits.all()):
            break
    return [fin_seqs[b][0][1:] for b in range(n)]
