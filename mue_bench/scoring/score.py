"""Scoring a grid's per-sample rows: quality per sample and agreement with each point's full model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mue_bench.data.loaders import Sample
from mue_bench.mue.config import ExitConfig
from mue_bench.scoring.metrics import accuracy, caption_agreement, label_agreement, score_grid


def score(samples: pd.DataFrame, dataset: list[Sample], configs: dict[str, ExitConfig], task: str,
          meteor: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Add per-sample quality and consistency columns; return corpus scores per point too."""
    by_point = {pid: g.sort_values("sample_index") for pid, g in samples.groupby("point_id", sort=False)}
    preds = {pid: g["prediction"].tolist() for pid, g in by_point.items()}
    corpus: dict[str, dict[str, float]] = {}
    scored = []
    if task == "caption":  # one tokenizer call serves the quality metrics and consistency
        _, tokens, scores = score_grid(preds, [s.references for s in dataset], meteor)
    consist: dict[str, np.ndarray] = {}
    for ref_id in {c.reference_id for c in configs.values()}:
        if ref_id not in preds:
            continue
        members = [pid for pid in preds if configs[pid].reference_id == ref_id]
        if task == "caption":
            consist.update(caption_agreement({pid: tokens[pid] for pid in members}, tokens[ref_id]))
        else:
            consist.update(label_agreement({pid: preds[pid] for pid in members}, preds[ref_id]))
    for pid, g in by_point.items():
        g = g.copy()
        if task == "caption":
            sc = scores[pid]
            for m in ("cider", "bleu4", "meteor", "rouge_l"):
                g[m] = sc.get(m + "_per_sample", np.full(len(g), np.nan))
            corpus[pid] = {m: sc[m] for m in ("bleu4", "meteor") if m in sc}
            g["correct"] = np.nan
        else:
            g["correct"] = accuracy(g["prediction"].tolist(), [s.label for s in dataset])
            for m in ("cider", "bleu4", "meteor", "rouge_l"):
                g[m] = np.nan
        g["consistency"] = consist.get(pid, np.full(len(g), np.nan))
        scored.append(g)
    return pd.concat(scored, ignore_index=True), corpus


