"""Per-sample cosine similarity between consecutive layers' states (DESIGN.md §1).

Per sample, never per batch: the authors flatten the whole batch into one vector, which makes every
sample's exit depend on its batch-mates. Padding positions are zeroed so they add nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stream_similarity(new: torch.Tensor, old: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """cos(vec(new_b), vec(old_b)) for each sample b of [B, N, D] states; [B] in float32."""
    if mask is not None:
        keep = mask[..., None].to(new.dtype)
        new, old = new * keep, old * keep
    return F.cosine_similarity(new.flatten(1).float(), old.flatten(1).float(), dim=1, eps=1e-12)


def batch_similarity(new: torch.Tensor, old: torch.Tensor, rows: torch.Tensor, positions: slice | None = None,
                     ) -> torch.Tensor:
    """The authors' similarity: one cosine over the batch's `rows` (a mask or indices) flattened together, padding
    included (only `positions` of each row where given), broadcast to [B] so every row sees the same value.
    Indices and slices select without a host sync; a boolean mask does not."""
    if positions is not None:
        new, old = new[:, positions], old[:, positions]
    sim = F.cosine_similarity(new[rows].flatten().float(), old[rows].flatten().float(), dim=0, eps=1e-12)
    return sim.expand(new.shape[0])


def group_similarity(new: torch.Tensor, old: torch.Tensor, group: int) -> torch.Tensor:
    """Similarity of the current token's state [R, D] with rows grouped per sample (beams decide
    together, as in the authors' code); [R // group]."""
    return stream_similarity(new.reshape(-1, group, new.shape[-1]), old.reshape(-1, group, old.shape[-1]))


def exit_fires(sim: torch.Tensor, threshold: float, fixed: int | None, layers_done: int) -> torch.Tensor:
    """Where a stream exits after `layers_done` layers: its similarity past the threshold (`s > τ`, the comparison
    grid reuse's certificates repeat), or, with a fixed exit (benchmarking), exactly once `fixed` layers ran."""
    if fixed is not None:
        return torch.full_like(sim, layers_done >= fixed, dtype=torch.bool)
    return sim > threshold
