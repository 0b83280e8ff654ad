"""Proposing a threshold grid from the similarities a model actually produces.

Useful thresholds differ per model (consecutive-layer cosines of a random Florence-2 sit near 0.4-0.7,
T5Gemma 2's near 0.97-0.99), so a grid is best read off a calibration trace: run the full model on a
few samples, collect s_l per stream, and take percentiles. A threshold at the p-th percentile lets
roughly (100 - p)% of the observed layer transitions trigger an exit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mue_bench.models.registry import resolve_device
from mue_bench.mue import ExitConfig
from mue_bench.run.prepare import prepare_inputs
from mue_bench.spec import SweepSpec


@dataclass
class GridProposal:
    percentiles: list[float]
    tau_img: list[float]
    tau_txt: list[float]
    tau_dec: list[float]
    n_samples: int

    def to_json(self) -> dict:
        return {"percentiles": self.percentiles, "tau_img": self.tau_img, "tau_txt": self.tau_txt,
                "tau_dec": self.tau_dec, "samples": self.n_samples}

    def toml(self) -> str:
        def fmt(values: list[float]) -> str:
            return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"

        return (f"# proposed from percentiles {', '.join(f'{p:g}' for p in self.percentiles)} of the full model's "
                f"similarities on {self.n_samples} samples\n"
                f"[grid]\ntau_img = {fmt(self.tau_img)}\ntau_txt = {fmt(self.tau_txt)}\n"
                f"tau_dec = {fmt(self.tau_dec)}\n")


def propose_grid(spec: SweepSpec, n_samples: int = 20, percentiles: list[float] | None = None) -> GridProposal:
    percentiles = percentiles or [50.0, 75.0, 90.0]
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"limit": n_samples})})
    device = resolve_device(spec.run.device)
    engine, samples, batches = prepare_inputs(spec, device)
    cfg = ExitConfig(encoder_mode=spec.grid.encoder_mode[0])
    img, txt, dec = [], [], []
    with torch.no_grad():
        for batch in batches:
            for s in engine.run_batch(batch, cfg).samples:
                img += s.enc_img_sims
                txt += s.enc_txt_sims
                dec += [x for step in s.dec_sims for x in step]

    def pick(values: list[float]) -> list[float]:
        arr = np.asarray(values, float)
        arr = arr[np.isfinite(arr)]
        return sorted({round(float(np.percentile(arr, p)), 4) for p in percentiles})

    return GridProposal(percentiles, pick(img), pick(txt), pick(dec), len(samples))
