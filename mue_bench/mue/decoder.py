"""Per-token decoder exit with KV-cache filling (DESIGN.md §1), as a `Stepper` for decoding.py.

At each step, after layer l the step stops for a sample if s_l > τ_dec (schedule applied); the beams
of a sample decide together. Skipped layers still need this step's K/V, or later tokens would attend
to a shorter history in deep layers:
- copy: layer l's slot is written into each skipped layer's slot;
- propagate: each skipped layer projects the exited state with its own K/V weights (CALM). A layer
  that ran for batch-mates on the whole batch already computed exactly that for the exited row, so
  only layers nobody ran (or that ran compacted) are projected;
- official: what the authors' code intends, the skipped layers' whole self- and cross-attention buffers
  become copies of layer l's;
- none: what the authors' released code computes (its copy never runs): a skipped layer gets no entry for
  this step, so later tokens reaching it attend over a shorter history. Every row of a layer must then skip
  together (batch scope, or one sample per batch), which the spec checks.
With `exit_scope = "batch"` the similarity is one cosine over every active row (beams and samples), so the
batch exits together; with `head_every_layer` the LM head also runs after every executed layer that does not
exit (its output unused, as in the authors' loop), a cost counted per sample in `heads`.
With an adapter that allows it (`compacts`), a layer runs on the rows still active only (batch
compaction): exited and finished rows cost nothing, and their slots are filled as above.
With `exit_sync = "lagged"` (sync.py) a layer runs on the rows the host knew to be active before the previous
one (exited rows masked) while the previous layer's flags are read; a layer that ran for nobody is dropped and
its K/V removed from the cache (`restore_layer`), and a head_every_layer head runs once its rows are known, one
layer late. Fills depend on the exits only, never on which rows a layer happened to run for, so they are eager's.
"""

from __future__ import annotations

import torch

from mue_bench.mue.adapter import ExitAdapter, compacts
from mue_bench.mue.cache import KV
from mue_bench.mue.config import ExitConfig, decoder_threshold
from mue_bench.mue.similarity import batch_similarity, exit_fires, group_similarity
from mue_bench.mue.sync import ExitSync, Flags


def step_threshold(cfg: ExitConfig, step: int, max_len: int) -> float:
    """The decoder threshold at generation step `step` of a search of `max_len` steps (inf: no exit there).
    The authors' schedule counts in their generator's max_len (max_len_b: the tokens before the EOS-only step);
    ours counts that step too."""
    return decoder_threshold(cfg.tau_dec, step, max_len - 1, cfg.dec_schedule)


class MuEStepper:
    def __init__(self, adapter: ExitAdapter, enc_out: torch.Tensor, enc_mask: torch.Tensor, cfg: ExitConfig,
                 beams: int, max_len: int, sync: ExitSync = "eager"):
        self.adapter, self.cfg, self.beams, self.max_len = adapter, cfg, beams, max_len
        self.lagged = sync == "lagged"
        self.enc_mask = enc_mask.repeat_interleave(beams, 0)
        self.cache = adapter.decoder_cache(enc_out.repeat_interleave(beams, 0))
        self.step_index = 0
        self.compact = compacts(adapter)
        # Per step: layers used per sample (0 for samples already finished) and similarities [B, L-1].
        self.layers: list[torch.Tensor] = []
        self.sims: list[torch.Tensor] = []
        self.heads: list[torch.Tensor] = []  # per step, extra LM-head calls per sample (head_every_layer)
        # Per step [B], the similarity after the last layer: with head_every_layer it decides whether that
        # layer's head runs (NaN where not computed); grid_reuse's certificates need it.
        self.final_sims: list[torch.Tensor] = []

    def _fires(self, sim: torch.Tensor, layer: int) -> torch.Tensor:
        fixed = self.cfg.fixed_exit
        return exit_fires(sim, step_threshold(self.cfg, self.step_index, self.max_len),
                          None if fixed is None else fixed[2], layer)

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        adapter, n_layers, every_head = self.adapter, self.adapter.n_dec_layers, self.cfg.head_every_layer
        h = adapter.decoder_embed(tokens, self.step_index)
        active = alive
        used = torch.where(alive, n_layers, 0)
        sims = torch.full((len(tokens) // self.beams, n_layers - 1), float("nan"), device=h.device)
        final = torch.full((len(tokens) // self.beams,), float("nan"), device=h.device)
        heads = torch.zeros(len(tokens), dtype=torch.long, device=h.device)
        known, ran = Flags(alive), 0  # what the host knows of the rows the next layer may have to update
        for layer in range(n_layers):
            if layer and not self.lagged:
                known = Flags(active)  # one host sync per layer: whether to go on, and how
            if known.counts[0] == 0:
                break
            entering = Flags(active) if self.lagged and layer else known  # lagged: read after the launch
            state = self.cache.layer_state(layer) if self.lagged else None
            new = self._layer(layer, h, active, known)
            fire, final = self._decide(layer, new, h, active, known, sims, final)
            if layer < n_layers - 1:
                used = torch.where(fire, layer + 1, used)  # not `used[fire] =`: a boolean index syncs
            goes_on = active & ~fire
            if every_head:
                heads += goes_on.long()
                if not self.lagged:
                    adapter.logprobs(new[goes_on])  # the authors' per-layer head, for its cost only
            active = goes_on
            if entering is not known:
                known = entering
                if every_head:  # the previous layer's head, on the rows it let go on: those known now
                    adapter.logprobs(h[known.rows()])
                if known.counts[0] == 0:  # everyone had exited: this layer ran for nobody
                    self.cache.restore_layer(layer, state)
                    break
            ran += 1
            h = new
        if self.lagged and every_head and ran == n_layers:  # the last layer's head
            adapter.logprobs(h[Flags(active).rows()])
        if self.cfg.kv_fill != "none":
            self._fill(used, h, ran)
        self.layers.append(used[:: self.beams].clone())
        self.sims.append(sims)
        self.heads.append(heads[:: self.beams].clone())
        self.final_sims.append(final)
        self.step_index += 1
        return adapter.logprobs(h)

    def _layer(self, layer: int, h: torch.Tensor, active: torch.Tensor, known: Flags) -> torch.Tensor:
        """Decoder layer `layer` on the rows the host knows may be active (all rows unless the adapter compacts);
        rows not active keep their state."""
        if self.compact and known.counts[0] < len(h):  # exited and finished rows cost nothing
            rows = known.rows()
            out = h.clone()
            out[rows] = self.adapter.decoder_layer_rows(layer, h[rows], rows, self.cache, self.enc_mask)
        else:
            out = self.adapter.decoder_layer(layer, h, self.cache, self.enc_mask)
        return torch.where(active[:, None], out, h)

    def _decide(self, layer: int, new: torch.Tensor, h: torch.Tensor, active: torch.Tensor, known: Flags,
                sims: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows that exit after `layer`, and the step's last similarity; records s_{layer+1} in `sims`. With
        batch scope the batch exits together, so the host's rows are the active ones whenever any is."""
        fire = torch.zeros_like(active)
        if layer == self.adapter.n_dec_layers - 1 and not self.cfg.head_every_layer:
            return fire, final
        if self.cfg.exit_scope == "batch":
            sim = batch_similarity(new, h, known.rows())[:: self.beams]
        else:
            sim = group_similarity(new, h, self.beams)
        fire = active & self._fires(sim, layer + 1).repeat_interleave(self.beams)
        # a sample already out keeps its state (similarity 1): record only what the sample computed
        computed = active.view(-1, self.beams).any(1)
        if layer < self.adapter.n_dec_layers - 1:
            sims[:, layer] = torch.where(computed, sim, sims[:, layer])
        else:
            final = torch.where(computed, sim, final)
        return fire, final

    def _fill_kv(self, layer: int, used: torch.Tensor, exits: list[int], h: torch.Tensor) -> KV:
        """What a row that skipped `layer` gets as this step's K/V there."""
        if self.cfg.kv_fill == "propagate":
            return self.adapter.propagate_kv(layer, h)
        if len(exits) == 1 and 1 <= exits[0] <= layer:  # one exit layer for all rows (always at batch 1)
            return self.cache.slot(exits[0] - 1)
        k, v = (torch.zeros_like(t) for t in self.cache.slot(0))
        for exit_layer in exits:
            if 1 <= exit_layer <= layer:
                rows = (used == exit_layer)[:, None, None, None]
                sk, sv = self.cache.slot(exit_layer - 1)
                k, v = torch.where(rows, sk, k), torch.where(rows, sv, v)
        return k, v

    def _fill(self, used: torch.Tensor, h: torch.Tensor, ran: int) -> None:
        n_layers = self.adapter.n_dec_layers
        exits = used.unique().tolist()  # one host sync per step, not one per layer
        deepest_skip = min(min((e for e in exits if e > 0), default=n_layers), ran)
        for layer in range(deepest_skip, n_layers):  # rows that used all layers up to here skipped nothing
            if layer >= ran:  # nobody ran it: every row needs a slot
                self.cache.append(layer, *self._fill_kv(layer, used, exits, h))
            # propagate: a layer that ran for the whole batch computed the exited rows' K/V already; the batch
            # ran it compacted (eager) exactly when some row was out before it (an exit, or 0: finished)
            elif self.cfg.kv_fill != "propagate" or (self.compact and exits[0] <= layer):
                skipped = used <= layer
                self.cache.write_slot(layer, skipped, *self._fill_kv(layer, used, exits, h))
        if self.cfg.kv_fill == "official":
            for exit_layer in exits:
                if 1 <= exit_layer < n_layers:
                    rows = used == exit_layer
                    for layer in range(exit_layer, n_layers):
                        self.cache.copy_layer(exit_layer - 1, layer, rows)

    def reorder(self, index: torch.Tensor) -> None:
        # Beams of a sample share their exits, so the per-sample records need no reordering.
        self.cache.reorder(index)
