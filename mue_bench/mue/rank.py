"""Ranking a closed answer set by one teacher-forced decoder pass, with MuE's decoder exit decided once per
layer over that pass: SNLI-VE as OFA evaluates it and as the MuE authors' code exits in it (`decoding.mode =
"rank"`).

Why not generation: OFA scores SNLI-VE (utils/eval_utils.py `eval_snli_ve`, Tangshengku/OFA b329878 lines
206-262) by feeding [decoder prompt; answer] for every candidate answer at once (the batch repeated per
candidate, sample-major) through the decoder in one non-incremental forward, masking the logits to the answer
trie (tasks/mm_tasks/snli_ve.py:80-98), and summing the log-probs of each answer's tokens and </s> (the prompt's
positions count 0); the argmax over candidates wins, the first on a tie. In that forward the authors' decoder loop
(models/ofa/unify_transformer.py, TransformerDecoder_MuE.extract_features_scriptable, lines 2175-2216) decides
the exit once per layer, on the cosine of the whole T x (B * candidates) x D tensor against the layer's input,
with the raw decoder threshold (`kwargs["decoder_thres"]`), and runs the LM head after every executed layer that
does not exit (`inner_out_states`); the exit layer's state goes through the final norm and the head.

Here, the same pass:
- exit_scope "batch": that cosine, over every row and position of the pass, padding included (the authors'); at
  batch 1 it is one sample's;
- exit_scope "sample": per sample, over its candidates' real positions only: a sample's exit and scores do not
  depend on its batch-mates or on padding (mue-bench's clean semantics);
- dec_schedule: the authors' step schedule lives in their sequence_generator.py, which this pass never enters,
  so under either schedule the threshold is the raw tau_dec (the spec lets a rank grid list one schedule);
- kv_fill: the pass keeps no cache, so a skipped layer needs nothing (the spec lets a rank grid list one fill);
- head_every_layer: the head over the pass's positions after every executed layer that does not exit (its output
  unused), as the decoder counts it per step;
- fixed_exit: the pass stops after exactly fixed_exit[2] layers.

Per-sample records fit the results schema as a generation's do: `tokens` is the chosen answer (its ids and </s>),
so predictions and accuracy are computed unchanged. `dec_layers` has one entry per teacher-forced position of
the sample (every candidate's prompt and answer tokens), each the pass's exit layer: layers_used counts decoder
layer executions per position as a generation counts them per token, and layer_savings divides by the full pass
over the same positions. `dec_sims` repeats the pass's similarities once per position likewise (calibrate-grid
weighs them as it weighs steps); `flops` counts positions x layers run (cost.ranking_flops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mue_bench.errors import SpecError
from mue_bench.mue.adapter import ExitAdapter, Streams
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.cost import encoder_flops, ranking_flops
from mue_bench.mue.encoder import EncoderResult
from mue_bench.mue.engine import BatchResult, Engine, SampleExits, encode
from mue_bench.mue.grid_reuse import SharedEncoder, decoder_setting, stream_certified
from mue_bench.mue.search import DecodingConfig, allowed_mask, allowed_next
from mue_bench.mue.similarity import batch_similarity, exit_fires, stream_similarity
from mue_bench.mue.sync import ExitSync


@dataclass(frozen=True)
class Candidates:
    """The pass's rows: for every sample b and answer c (row b * C + c), the decoder input prompt_b + answer_c
    (without its </s>), right-padded; and where each row's answer is scored."""

    tokens: torch.Tensor  # [B * C, T]
    mask: torch.Tensor  # [B * C, T], True on real tokens
    starts: list[int]  # per row: the position whose output predicts the answer's first token (len(prompt) - 1)
    answers: tuple[tuple[int, ...], ...]  # each ending with EOS: what positions start.. are scored against

    @property
    def per_sample(self) -> int:
        return len(self.answers)

    def lengths(self) -> list[int]:
        return self.mask.sum(1).tolist()


def candidates(prompts: list[list[int]], answers: tuple[tuple[int, ...], ...], pad_id: int,
               device: torch.device) -> Candidates:
    """eval_snli_ve's valid_prev_items: decoder_prompt + answer for each sample and answer, sample-major."""
    seqs = [list(p) + list(a[:-1]) for p in prompts for a in answers]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):
        tokens[r, : len(s)], mask[r, : len(s)] = torch.tensor(s, dtype=torch.long), True
    starts = [len(p) - 1 for p in prompts for _ in answers]
    return Candidates(tokens.to(device), mask.to(device), starts, answers)


@dataclass
class PassResult:
    """What one ranking pass computed, per sample: decoder layers run, similarities after layers 1..L-1 (NaN
    where not computed), after the last layer (head_every_layer), layers whose head ran for cost only, and each
    candidate's score."""

    used: torch.Tensor  # [B] long
    sims: torch.Tensor  # [B, L-1] float32
    final_sims: torch.Tensor  # [B]
    head_layers: torch.Tensor  # [B] long
    scores: torch.Tensor  # [B, C] float32

    @property
    def choice(self) -> list[int]:
        return self.scores.argmax(1).tolist()  # the first maximum, as eval_snli_ve's argmax


def _similarity(new: torch.Tensor, old: torch.Tensor, cand: Candidates, active: torch.Tensor,
                scope: str) -> torch.Tensor:
    """[B]: the authors' one cosine over every active row and position (batch), or per sample over its
    candidates' real positions (sample)."""
    c = cand.per_sample
    if scope == "batch":
        return batch_similarity(new, old, active.repeat_interleave(c))[: len(active)]
    b, t, d = len(active), new.shape[1], new.shape[2]
    return stream_similarity(new.view(b, c * t, d), old.view(b, c * t, d), cand.mask.view(b, c * t))


@torch.no_grad()
def rank_pass(adapter: ExitAdapter, enc_out: torch.Tensor, enc_mask: torch.Tensor, cand: Candidates,
              cfg: ExitConfig) -> PassResult:
    """The decoder over every candidate at once, one exit decision per layer, then the answers' scores."""
    n_layers, c = adapter.n_dec_layers, cand.per_sample
    n = enc_out.shape[0]
    device = enc_out.device
    samples = torch.arange(n, device=device).repeat_interleave(c)
    context = adapter.sequence_context(enc_out, enc_mask, cand.tokens.shape[1])
    h = adapter.decoder_sequence_embed(cand.tokens)
    active = torch.ones(n, dtype=torch.bool, device=device)
    used = torch.full((n,), n_layers, dtype=torch.long, device=device)
    sims = torch.full((n, n_layers - 1), float("nan"), device=device)
    final = torch.full((n,), float("nan"), device=device)
    head_layers = torch.zeros(n, dtype=torch.long, device=device)
    # the raw threshold: no step schedule in a ranking pass (module docstring)
    tau, fixed = cfg.tau_dec, cfg.fixed_exit
    for layer in range(n_layers):
        n_active = int(active.sum())  # one host sync per layer: whether to go on, and on which rows
        if n_active == 0:
            break
        if n_active < n:  # exited samples cost nothing
            rows = active.repeat_interleave(c).nonzero().squeeze(1)
            new = h.clone()
            new[rows] = adapter.decoder_sequence_layer(layer, h[rows], context, samples[rows], cand.mask[rows])
        else:
            new = adapter.decoder_sequence_layer(layer, h, context, samples, cand.mask)
        fire = torch.zeros_like(active)
        if layer < n_layers - 1 or cfg.head_every_layer:
            sim = _similarity(new, h, cand, active, cfg.exit_scope)
            fire = active & exit_fires(sim, tau, None if fixed is None else fixed[2], layer + 1)
            if layer < n_layers - 1:
                sims[:, layer] = torch.where(active, sim, sims[:, layer])
                used[fire] = layer + 1
            else:
                final = torch.where(active, sim, final)
        if cfg.head_every_layer:
            goes_on = active & ~fire
            adapter.logprobs(new[goes_on.repeat_interleave(c)])  # the authors' per-layer head, for its cost only
            head_layers += goes_on.long()
        active &= ~fire
        h = new
    return PassResult(used, sims, final, head_layers, answer_scores(adapter, h, cand))


def answer_scores(adapter: ExitAdapter, h: torch.Tensor, cand: Candidates) -> torch.Tensor:
    """[B, C]: each candidate's sum over its answer tokens and </s> of the log-prob under the trie constraint
    (the log-softmax over the allowed tokens, which equals eval_snli_ve's log-softmax of logits masked to -inf);
    only the scored positions go through the head."""
    c = cand.per_sample
    rows, cols, targets, allowed = [], [], [], []
    for r, start in enumerate(cand.starts):
        answer = cand.answers[r % c]
        for k, target in enumerate(answer):
            rows.append(r)
            cols.append(start + k)
            targets.append(target)
            allowed.append(allowed_next(cand.answers, answer[:k]))
    logprobs = adapter.logprobs(h[rows, cols])  # [P, V] float32
    keep = allowed_mask(allowed, logprobs)
    device = logprobs.device
    norm = torch.logsumexp(logprobs.masked_fill(~keep, float("-inf")), -1)
    picked = logprobs.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1) - norm
    per_row = torch.zeros(len(cand.starts), device=device).index_add_(0, torch.tensor(rows, device=device), picked)
    return per_row.view(-1, c)


@dataclass
class RankRaw:
    """What the model work of one batch produced (the timed part), before host-side bookkeeping."""

    batch: Any
    streams: Streams
    encoder: EncoderResult
    candidates: Candidates
    result: PassResult


def run_rank(adapter: ExitAdapter, batch: Any, cfg: ExitConfig, decoding: DecodingConfig,
             sync: ExitSync = "eager") -> RankRaw:
    """Encoder with exits, then the ranking pass."""
    streams, enc = encode(adapter, batch, cfg, sync)  # the pass itself decides once per layer: no lag there
    cand = candidates(adapter.decoder_prompts(batch), decoding.answers, adapter.pad_id, enc.out.device)
    return RankRaw(batch, streams, enc, cand, rank_pass(adapter, enc.out, enc.mask, cand, cfg))


def collect_rank(adapter: ExitAdapter, raw: RankRaw, cfg: ExitConfig) -> BatchResult:
    """Per-sample records in the results schema (module docstring)."""
    res, enc, cand = raw.result, raw.encoder, raw.candidates
    c, n_img = cand.per_sample, raw.streams.image.shape[1]
    n_txt = raw.streams.text_mask.sum(1).tolist()
    fixed = adapter.input_flops(raw.batch)
    lengths = cand.lengths()
    used, sims, heads = res.used.tolist(), res.sims.tolist(), res.head_layers.tolist()
    out = []
    for b, choice in enumerate(res.choice):
        mine = lengths[b * c:(b + 1) * c]
        positions = sum(mine)
        img_layers, txt_layers = int(enc.img_layers[b]), int(enc.txt_layers[b])
        cross_len = n_img + int(n_txt[b])
        flops = fixed + encoder_flops(adapter.dims, cfg.encoder_mode, n_img, int(n_txt[b]), img_layers, txt_layers,
                                      adapter.n_enc_layers)
        flops += ranking_flops(adapter.dims, mine, used[b], cross_len, heads[b] * positions)
        out.append(SampleExits(
            tokens=list(cand.answers[choice]), enc_img_layers=img_layers, enc_txt_layers=txt_layers,
            dec_layers=[used[b]] * positions, enc_img_sims=enc.img_sims[b].tolist(),
            enc_txt_sims=enc.txt_sims[b].tolist(), dec_sims=[sims[b]] * positions, flops=flops))
    return BatchResult(out)


class RankEngine(Engine):
    """An `Engine` whose decoding is a ranking pass (decoding.mode = "rank") instead of a search."""

    def __init__(self, adapter: ExitAdapter, decoding: DecodingConfig, exit_sync: ExitSync = "eager"):
        if not adapter.full_sequence:
            raise SpecError(f"decoding.mode \"rank\": the {type(adapter).__name__} has no full-sequence decoder "
                            "call; use mode = \"generate\"")
        if not decoding.answers:
            raise SpecError("decoding.mode \"rank\" needs decoding.answers")
        super().__init__(adapter, decoding, exit_sync)

    def prepare(self, samples: list) -> Any:
        """The batch, refused before any model work where a sample's longest [prompt; answer] would not fit the
        decoder's position table (the pass would index past it)."""
        batch = super().prepare(samples)
        limit = self.adapter.decoder_positions
        if limit is not None:
            longest = max(len(a) for a in self.decoding.answers) - 1  # fed without its EOS
            for sample, prompt in zip(samples, self.adapter.decoder_prompts(batch)):
                if len(prompt) + longest > limit:
                    raise SpecError(f"sample {sample.sample_id}: its ranking pass is {len(prompt) + longest} decoder "
                                    f"positions (a {len(prompt)}-token decoder prompt and the longest answer), over "
                                    f"the {limit} of this checkpoint's position table; shorten the sample's text, "
                                    "or use a shorter model.prompt_type")
        return batch

    def run(self, batch: Any, cfg: ExitConfig) -> RankRaw:
        return run_rank(self.adapter, batch, cfg, self.decoding, self.exit_sync)

    def collect(self, raw: RankRaw, cfg: ExitConfig) -> BatchResult:
        return collect_rank(self.adapter, raw, cfg)

    def grid_reuse(self) -> RankReuse:
        return RankReuse(self.adapter, self.decoding, certificates=self.certificates)


def pass_certified(res: PassResult, n_layers: int, tau: float) -> bool:
    """Whether every decision of a stored pass (every sample's in sample scope, the batch's one decision repeated
    on every row in batch scope) falls the same way under `tau`: it went on after layers 1..used-1 and exited
    after layer `used` (unless it used all L), and with head_every_layer the last layer's decision (whether its
    head ran) is the same. That last decision is one more exit for `stream_certified`: after layer L the pass
    "exits" where the last layer's similarity fired (its head did not run), else it used all L + 1."""
    sims = torch.cat([res.sims, res.final_sims[:, None]], 1)
    full = res.used == n_layers
    last_fired = full & ~res.final_sims.isnan() & (res.head_layers < n_layers)
    used = torch.where(full & ~last_fired, n_layers + 1, res.used)
    return bool(stream_certified(sims, used, tau).all())


class RankReuse:
    """What the runner's grid reuse (`timing.batches`) gets in rank mode, exact (grid_reuse.py's scheme for a
    pass): a batch's encoder result is shared by the points of its encoder setting (`SharedEncoder`, kept across
    settings it certifies), and only the ranking pass runs per point; a stored pass of the batch, under the same
    encoder exits, exit scope and head_every_layer, is a point's result with no model work where every per-layer
    decision falls the same way under its tau_dec (`pass_certified`). The pass is always of the whole batch, so a
    result is the one running the point in full gives. Fixed exits (or certificates off) share a pass by exact
    decoder setting only. Memory: one encoder setting's device tensors, as GridReuse; on the host, one PassResult
    (a few floats per sample and layer) per pass computed, never one per point."""

    def __init__(self, adapter: ExitAdapter, decoding: DecodingConfig, certificates: bool = True):
        self.adapter, self.decoding, self.certificates = adapter, decoding, certificates
        self._encoders = SharedEncoder(adapter, certificates)
        self._passes: dict[tuple, list[PassResult]] = {}  # per batch, encoder exits and scope: the passes run
        self._executions = 0  # decoder layers per position, summed over samples (the encoder's: self._encoders)
        self._certified_passes = 0

    @property
    def certified(self) -> dict[str, int]:
        """What certificates served with no model work: batches' encoder results, batches' passes."""
        return {"encodings": self._encoders.certified, "passes": self._certified_passes}

    def take_executions(self) -> int:
        n, self._executions = self._executions + self._encoders.take_executions(), 0
        return n

    def evaluate(self, batch_index: int, first_sample: int, batch: Any, cfg: ExitConfig) -> BatchResult:
        streams, enc = self._encoders.get(batch_index, batch, cfg)
        cand = candidates(self.adapter.decoder_prompts(batch), self.decoding.answers, self.adapter.pad_id,
                          enc.out.device)
        exact = not self.certificates or cfg.fixed_exit is not None
        key = (first_sample, cfg.encoder_mode, tuple(enc.img_layers.tolist()), tuple(enc.txt_layers.tolist()),
               cfg.exit_scope, cfg.head_every_layer, decoder_setting(cfg) if exact else None)
        stored = self._passes.setdefault(key, [])
        n_layers = self.adapter.n_dec_layers
        result = next((r for r in stored if exact or pass_certified(r, n_layers, cfg.tau_dec)), None)
        if result is None:
            res = rank_pass(self.adapter, enc.out, enc.mask, cand, cfg)
            result = PassResult(*(t.cpu() for t in (res.used, res.sims, res.final_sims, res.head_layers, res.scores)))
            stored.append(result)
            lengths = torch.tensor(cand.lengths()).view(-1, cand.per_sample).sum(1)
            self._executions += int((result.used * lengths).sum())
        else:
            self._certified_passes += 1
        return collect_rank(self.adapter, RankRaw(batch, streams, enc, cand, result), cfg)
