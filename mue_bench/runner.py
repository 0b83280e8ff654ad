"""Running a sweep: load once, evaluate every grid point, score the whole grid at once, write records.

Shape: the model and the data are loaded once and every input is pre-processed before any timing.
Each point is warmed up, then timed over `repeats` passes of model work only (the full model, the shared
reference of every time saving, over at least `reference_repeats`); its per-sample rows are
written as soon as it finishes, so an interrupted sweep loses at most the point in flight. Scoring
happens once at the end for all points (one Java process for tokenizing, one for METEOR).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np
import pandas as pd
import torch

import mue_bench
from mue_bench.data.loaders import Sample, check_images
from mue_bench.data.registry import load_samples
from mue_bench.errors import MueBenchError
from mue_bench.metrics import accuracy, caption_agreement, label_agreement, score_grid
from mue_bench.models.registry import checkpoint_hash, device_name, load_adapter, resolve_device
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import collect, run_model
from mue_bench.records import failed_rows, summarise
from mue_bench.reuse import GridReuse, encoder_setting
from mue_bench.spec import SweepSpec, point_id
from mue_bench.store import POINTS_SCHEMA, SAMPLES_SCHEMA, SweepStore
from mue_bench.timing import peak_memory, reset_peak_memory, timed


@dataclass
class SweepOptions:
    fresh: bool = False
    continue_on_error: bool = False
    meteor: bool = True


@dataclass
class Progress:
    """Callbacks the CLI uses to draw progress; the library itself prints nothing."""

    start_points: Callable[[int, int], None] = lambda total, done: None
    start_point: Callable[[str, int], None] = lambda pid, n_batches: None
    batch_done: Callable[[], None] = lambda: None
    point_done: Callable[[str, bool], None] = lambda pid, ok: None
    warming_up: Callable[[], None] = lambda: None
    scoring: Callable[[], None] = lambda: None
    warn: Callable[[str], None] = lambda message: None


@dataclass
class SweepOutcome:
    points: pd.DataFrame
    samples: pd.DataFrame
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    layer_executions: int = 0  # of the points computed in this run (warm-up and repeats included)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def evaluate_point(adapter, batches: list, cfg: ExitConfig, spec: SweepSpec, device: torch.device,
                   on_batch: Callable[[], None] = lambda: None, reuse: GridReuse | None = None,
                   ) -> tuple[pd.DataFrame, int]:
    """Per-sample raw rows of one grid point and the layer executions it took. The timed batches (all, or
    the first `timing.batches` when `reuse` is given) run in full: outputs of the first pass, median batch
    times. The rest come from `reuse`, with no latency."""
    decoding = adapter.decoding(**spec.decoding.model_dump())
    n_timed = len(batches) if reuse is None else _n_timed(spec, batches)
    executions = 0
    for _ in range(spec.timing.warmup):
        for batch in batches[:1]:
            executions += _executions(collect(adapter, run_model(adapter, batch, cfg, decoding), cfg))
    reset_peak_memory(device)
    times: list[list[float]] = [[] for _ in batches[:n_timed]]
    results = []
    for rep in range(_repeats(spec, cfg)):
        for i, batch in enumerate(batches[:n_timed]):
            raw, secs = timed(lambda b=batch: run_model(adapter, b, cfg, decoding), device)
            times[i].append(secs)
            if rep == 0:
                results.append(collect(adapter, raw, cfg))
                on_batch()
            executions += _executions(results[i])
    mem = peak_memory(device)
    first = n_timed * spec.run.batch_size
    for i, batch in enumerate(batches[n_timed:], start=n_timed):
        assert reuse is not None
        results.append(reuse.evaluate(i, i * spec.run.batch_size, batch, cfg))
        on_batch()
    if reuse is not None:
        executions += reuse.take_executions()
    pid = point_id(cfg)
    rows, index = [], 0
    for b, res in enumerate(results):
        share = median(times[b]) / len(res.samples) if b < n_timed else float("nan")
        for s in res.samples:
            rows.append({
                "point_id": pid, "sample_index": index, "sample_id": None, "batch_index": b,
                "prediction": adapter.text(s.tokens), "tokens": s.tokens,
                "enc_img_layers": s.enc_img_layers, "enc_txt_layers": s.enc_txt_layers,
                "dec_layers": s.dec_layers, "layers_used": s.layers_used, "flops": s.flops,
                "latency_s": share, "peak_mem_bytes": mem if index < first else None,
                "enc_img_sims": s.enc_img_sims, "enc_txt_sims": s.enc_txt_sims, "dec_sims": s.dec_sims,
            })
            index += 1
    return pd.DataFrame(rows), executions


def warm_up(adapter, batches: list, encoder_mode: str, spec: SweepSpec) -> int:
    """One untimed full-model pass over every batch that will be timed, before the first timed point: the
    first run of each input shape is slow (allocator growth, kernel selection), and without this pass the
    point timed first, the full model, pays for it and every time saving is inflated. Returns the layer
    executions it took."""
    decoding = adapter.decoding(**spec.decoding.model_dump())
    cfg = ExitConfig(encoder_mode=encoder_mode)
    return sum(_executions(collect(adapter, run_model(adapter, b, cfg, decoding), cfg))
               for b in batches[:_n_timed(spec, batches)])


def _n_timed(spec: SweepSpec, batches: list) -> int:
    """How many batches of every point are run in full and timed (the rest come from grid reuse)."""
    return min(spec.timing.batches or len(batches), len(batches))


def _repeats(spec: SweepSpec, cfg: ExitConfig) -> int:
    return max(spec.timing.repeats, spec.timing.reference_repeats) if cfg.is_full else spec.timing.repeats


def _executions(result) -> int:
    return sum(s.layers_used for s in result.samples)


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
    for mode in {c.encoder_mode for c in configs.values()}:
        ref_id = point_id(ExitConfig(encoder_mode=mode))
        if ref_id not in preds:
            continue
        members = [pid for pid in preds if configs[pid].encoder_mode == mode]
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


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(spec: SweepSpec, device: torch.device, run_id: str) -> dict:
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = "not installed"
    return {
        "run_id": run_id, "spec_name": spec.name, "spec_hash": spec.spec_hash(),
        "context_hash": spec.context_hash(), "model_family": spec.model.family,
        "checkpoint": spec.model.checkpoint, "checkpoint_hash": checkpoint_hash(spec.model),
        "dataset": spec.data.dataset, "split": spec.data.split, "task": spec.data.task,
        "device": str(device), "device_name": device_name(device), "dtype": spec.run.dtype,
        "batch_size": spec.run.batch_size, "num_beams": spec.decoding.num_beams,
        "max_len": spec.decoding.max_len, "torch_version": torch.__version__,
        "transformers_version": tf_version, "mue_bench_version": mue_bench.__version__,
        "git_rev": _git_rev(), "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_inputs(spec: SweepSpec, device: torch.device):
    """Model, samples and pre-processed batches on the device: everything before timing starts."""
    samples = load_samples(spec.data)
    check_images(samples)
    adapter = load_adapter(spec.model, device, spec.run.dtype)
    batches = [adapter.prepare(chunk).to(device) for chunk in _batches(samples, spec.run.batch_size)]
    return adapter, samples, batches


def run_sweep(spec: SweepSpec, options: SweepOptions | None = None, progress: Progress | None = None,
              ) -> SweepOutcome:
    options, progress = options or SweepOptions(), progress or Progress()
    device = resolve_device(spec.run.device)
    torch.manual_seed(spec.run.seed)
    configs = {point_id(c): c for c in spec.points()}
    store = SweepStore(spec.results_path(), spec.samples_path(), spec.context_hash(), fresh=options.fresh)
    done = {pid: rows for pid, rows in store.finished().items() if pid in configs}
    # Points sharing an encoder setting run back to back, so grid reuse keeps one setting's encoder outputs.
    first_seen: dict = {}
    for c in configs.values():
        first_seen.setdefault(encoder_setting(c), len(first_seen))
    todo = sorted((pid for pid in configs if pid not in done), key=lambda p: first_seen[encoder_setting(configs[p])])
    adapter, samples, batches = prepare_inputs(spec, device)
    native = getattr(adapter, "native_encoder_mode", None)
    if native and any(c.encoder_mode != native for c in configs.values()):
        progress.warn(f"this model's encoder is {'joint' if native == 'freeze' else 'split into streams'}; "
                      f"encoder_mode {'split' if native == 'freeze' else 'freeze'} computes a different "
                      f"function than the model was trained for (use {native!r} unless you mean it)")
    if any(len(rows) != len(samples) for rows in done.values()):
        raise MueBenchError("stored points cover a different number of samples; rerun with --fresh")

    outcome = SweepOutcome(pd.DataFrame(), pd.DataFrame(), reused=list(done))
    progress.start_points(len(configs), len(done))
    reuse = GridReuse(adapter, adapter.decoding(**spec.decoding.model_dump())) if spec.timing.batches else None
    if todo and spec.timing.warmup:
        progress.warming_up()
        outcome.layer_executions += warm_up(adapter, batches, configs[todo[0]].encoder_mode, spec)
    for pid in todo:
        progress.start_point(pid, len(batches))
        try:
            rows, executions = evaluate_point(adapter, batches, configs[pid], spec, device, progress.batch_done,
                                              reuse)
            outcome.layer_executions += executions
        except (KeyboardInterrupt, MueBenchError):
            raise
        except Exception as e:  # one failing point does not lose the grid, if asked
            if not options.continue_on_error:
                raise MueBenchError(f"grid point {pid} failed: {type(e).__name__}: {e} (finished points are "
                                    "saved; --continue-on-error records failures and goes on)") from e
            store.save_failure(pid, e)
            outcome.failed.append(pid)
            progress.point_done(pid, False)
            continue
        store.save_point(pid, rows)
        done[pid] = rows
        outcome.computed.append(pid)
        progress.point_done(pid, True)

    progress.scoring()
    raw = pd.concat([done[pid] for pid in configs if pid in done], ignore_index=True)
    raw["sample_id"] = raw["sample_index"].map(lambda i: samples[i].sample_id)
    scored, corpus = score(raw, samples, configs, spec.data.task, meteor=options.meteor)
    points = summarise(scored, configs, spec.data.task, corpus)
    failures = store.failures()
    if failures:
        points = pd.concat([points, failed_rows(failures, configs)], ignore_index=True)
    for key, value in provenance(spec, device, uuid.uuid4().hex[:12]).items():
        points[key] = value
    points = points.reindex(columns=POINTS_SCHEMA.names)
    scored = scored.reindex(columns=SAMPLES_SCHEMA.names)
    store.finish(scored, points, keep_parts=bool(failures))
    outcome.points, outcome.samples = points, scored
    outcome.failed = sorted(set(outcome.failed) | set(failures))
    return outcome
