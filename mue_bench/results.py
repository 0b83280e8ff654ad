"""Results on disk: explicit pyarrow schemas, atomic writes, and resume by grid-point id.

While a sweep runs, each finished grid point is written at once to `<name>.parts/<point-id>.parquet`
(temp file + rename, so a kill never leaves a torn file); a failed point leaves `<point-id>.failed.json`.
At the end the parts are merged, scored and written as `<name>.samples.parquet` (one row per sample
and point) and `<name>.parquet` (one row per point). A rerun of the same spec reuses every finished
point, from the parts or from the final samples file, so nothing is recomputed or duplicated.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mue_bench.errors import MueBenchError, SpecError

SAMPLE_FIELDS = [
    ("point_id", pa.string()),
    ("sample_index", pa.int32()),
    ("sample_id", pa.string()),
    ("batch_index", pa.int32()),
    ("prediction", pa.string()),
    ("tokens", pa.list_(pa.int32())),
    ("enc_img_layers", pa.int32()),
    ("enc_txt_layers", pa.int32()),
    ("dec_layers", pa.list_(pa.int32())),
    ("layers_used", pa.int64()),
    ("flops", pa.float64()),
    ("latency_s", pa.float64()),  # share of its batch's median time (batch time at batch 1); NaN if untimed
    # Paired timing of the sample's batch (the same lists on every row of a batch): each repeat ran the point
    # and its full model back to back on this batch, in alternating order. Empty for a full-model point.
    ("pair_s", pa.list_(pa.float64())),  # the point's seconds, per pair
    ("pair_ref_s", pa.list_(pa.float64())),  # the full model's seconds, per pair
    ("pair_ref_first", pa.list_(pa.bool_())),  # whether the full model ran first in that pair
    ("pair_at", pa.list_(pa.float64())),  # when the pair was measured (Unix time), for the drift alarm
    ("peak_mem_bytes", pa.int64()),
    # Where the point was timed: its worker's host and device (a Ray sweep spreads points over several)
    ("host", pa.string()),
    ("device_name", pa.string()),
    ("enc_img_sims", pa.list_(pa.float32())),
    ("enc_txt_sims", pa.list_(pa.float32())),
    ("dec_sims", pa.list_(pa.list_(pa.float32()))),
]
SCORE_FIELDS = [
    ("cider", pa.float64()),
    ("bleu4", pa.float64()),
    ("meteor", pa.float64()),
    ("rouge_l", pa.float64()),
    ("correct", pa.float64()),
    ("consistency", pa.float64()),
]
RAW_SAMPLES_SCHEMA = pa.schema(SAMPLE_FIELDS)
SAMPLES_SCHEMA = pa.schema(SAMPLE_FIELDS + SCORE_FIELDS)

POINTS_SCHEMA = pa.schema([
    ("point_id", pa.string()),
    ("reference_id", pa.string()),  # the full-model point this point's savings and quality_rel divide by
    ("status", pa.string()),  # "ok" | "failed"
    ("error", pa.string()),
    ("is_full", pa.bool_()),
    ("tau_img", pa.float64()),
    ("tau_txt", pa.float64()),
    ("tau_dec", pa.float64()),
    ("encoder_mode", pa.string()),
    ("kv_fill", pa.string()),
    ("dec_schedule", pa.string()),
    ("exit_scope", pa.string()),  # "sample" | "batch" (the authors' batch-global similarity)
    ("head_every_layer", pa.bool_()),  # the LM head ran after every executed decoder layer (the authors' code)
    ("fixed_exit", pa.list_(pa.int32())),
    ("n", pa.int64()),
    ("n_timed", pa.int64()),  # samples whose latency was measured (all unless timing.batches is set)
    ("enc_img_layers", pa.float64()),
    ("enc_txt_layers", pa.float64()),
    ("dec_layers", pa.float64()),
    ("layers_used", pa.int64()),
    ("layers_full", pa.int64()),
    ("layer_savings", pa.float64()),
    ("flops_used", pa.float64()),
    ("flops_full", pa.float64()),
    ("flop_savings", pa.float64()),
    ("wall_s", pa.float64()),
    ("wall_full_s", pa.float64()),
    ("time_savings", pa.float64()),  # 1 - median over pairs of (point time / full-model time)
    ("time_savings_lo", pa.float64()),  # 95% bootstrap interval over pairs
    ("time_savings_hi", pa.float64()),
    ("n_pairs", pa.int64()),
    ("realization", pa.float64()),
    ("realization_lo", pa.float64()),
    ("realization_hi", pa.float64()),
    ("timing_warning", pa.string()),  # why the time columns are not to be trusted (drift, noise); null if fine
    ("latency_p50_s", pa.float64()),
    ("latency_p90_s", pa.float64()),
    ("peak_mem_bytes", pa.int64()),
    ("quality_metric", pa.string()),
    ("quality", pa.float64()),
    ("quality_full", pa.float64()),
    ("quality_rel", pa.float64()),
    ("cider", pa.float64()),
    ("bleu4", pa.float64()),
    ("meteor", pa.float64()),
    ("rouge_l", pa.float64()),
    ("accuracy", pa.float64()),
    ("consistency", pa.float64()),
    # provenance
    ("run_id", pa.string()),
    ("spec_name", pa.string()),
    ("spec_hash", pa.string()),
    ("context_hash", pa.string()),
    ("model_family", pa.string()),
    ("checkpoint", pa.string()),
    ("checkpoint_hash", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("device", pa.string()),
    ("device_name", pa.string()),  # of the worker that timed the point (from its samples); null if it failed
    ("host", pa.string()),
    ("dtype", pa.string()),
    ("batch_size", pa.int64()),
    ("parity", pa.bool_()),  # grid.parity: every setting of the authors' released code
    ("exit_sync", pa.string()),  # timing.exit_sync: how the timed loops read exit flags ("eager", "lagged")
    ("num_beams", pa.int64()),
    ("max_len", pa.int64()),
    ("torch_version", pa.string()),
    ("transformers_version", pa.string()),
    ("mue_bench_version", pa.string()),
    ("git_rev", pa.string()),
    ("created_at", pa.string()),
])


# Typed rows: the runner and summarise build these, so a misspelt or missing field fails where the row is made
# (slots refuse an unknown attribute), not as an empty column on disk. Their fields are the schemas' names,
# in order (tested); scores and provenance are added to the frames as columns and checked by `conform`.
@dataclass(slots=True, kw_only=True)
class SampleRow:
    point_id: str
    sample_index: int
    sample_id: str | None
    batch_index: int
    prediction: str
    tokens: list[int]
    enc_img_layers: int
    enc_txt_layers: int
    dec_layers: list[int]
    layers_used: int
    flops: float
    latency_s: float
    pair_s: list[float]
    pair_ref_s: list[float]
    pair_ref_first: list[bool]
    pair_at: list[float]
    peak_mem_bytes: int | None
    host: str | None
    device_name: str | None
    enc_img_sims: list[float]
    enc_txt_sims: list[float]
    dec_sims: list[list[float]]


@dataclass(slots=True, kw_only=True)
class PointRow:
    """A point's measured and derived columns (POINTS_SCHEMA less provenance); None where not known (a failed
    point, or one whose full model failed)."""

    point_id: str
    reference_id: str
    status: str
    error: str | None = None
    is_full: bool
    tau_img: float
    tau_txt: float
    tau_dec: float
    encoder_mode: str
    kv_fill: str
    dec_schedule: str
    exit_scope: str
    head_every_layer: bool
    fixed_exit: list[int] | None = None
    n: int | None = None
    n_timed: int | None = None
    enc_img_layers: float | None = None
    enc_txt_layers: float | None = None
    dec_layers: float | None = None
    layers_used: int | None = None
    layers_full: int | None = None
    layer_savings: float | None = None
    flops_used: float | None = None
    flops_full: float | None = None
    flop_savings: float | None = None
    wall_s: float | None = None
    wall_full_s: float | None = None
    time_savings: float | None = None
    time_savings_lo: float | None = None
    time_savings_hi: float | None = None
    n_pairs: int | None = None
    realization: float | None = None
    realization_lo: float | None = None
    realization_hi: float | None = None
    timing_warning: str | None = None
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    peak_mem_bytes: int | None = None
    quality_metric: str | None = None
    quality: float | None = None
    quality_full: float | None = None
    quality_rel: float | None = None
    cider: float | None = None
    bleu4: float | None = None
    meteor: float | None = None
    rouge_l: float | None = None
    accuracy: float | None = None
    consistency: float | None = None


def _frame(rows: list, row_type: type, schema: pa.Schema) -> pd.DataFrame:
    names = [f.name for f in fields(row_type)]
    return conform(pd.DataFrame([[getattr(r, n) for n in names] for r in rows], columns=names), schema)


def sample_frame(rows: list[SampleRow]) -> pd.DataFrame:
    """Raw per-sample rows as a frame in RAW_SAMPLES_SCHEMA's order."""
    return _frame(rows, SampleRow, RAW_SAMPLES_SCHEMA)


def point_frame(rows: list[PointRow]) -> pd.DataFrame:
    """Point rows as a frame in POINTS_SCHEMA's order (provenance columns empty until the runner fills them)."""
    return _frame(rows, PointRow, POINTS_SCHEMA)


def samples_path_for(results: Path) -> Path:
    """The per-sample file that belongs to a results file: results/<name>.samples.parquet."""
    return results.with_name(results.name.removesuffix(".parquet") + ".samples.parquet")




def conform(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """The frame's columns in the schema's order; a column the schema lacks is a misspelt or forgotten key
    and is refused rather than dropped (columns the frame lacks, e.g. savings of a failed point, stay empty)."""
    unknown = [c for c in df.columns if c not in schema.names]
    if unknown:
        raise ValueError(f"columns not in the results schema: {', '.join(map(str, unknown))}")
    out = df.reindex(columns=schema.names)
    for field in schema:  # a list column with no list in it (every point failed) is all NaN: make it nulls
        if pa.types.is_list(field.type) and out[field.name].dtype != object:
            out[field.name] = pd.Series([None] * len(out), index=out.index, dtype=object)
    return out


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full disk while writing `path` is one line for the user (exit 1), not an OSError traceback."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC or "No space left on device" in str(e):  # pyarrow's errors carry no errno
            raise MueBenchError(f"no space left on device writing {path}; free space or choose another "
                                "output.dir") from None
        raise


def write_atomic(df: pd.DataFrame, schema: pa.Schema, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a parquet file so that readers see the old file or the new one, never a torn one."""
    _commit([(_staged(df, schema, path, metadata), path)])


def _staged(df: pd.DataFrame, schema: pa.Schema, path: Path, metadata: dict[str, str] | None = None) -> str:
    """The table written to a temp file beside `path` (removed again if the write fails), to be renamed."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   **{k.encode(): v.encode() for k, v in metadata.items()}})
        fd, tmp = _temp_beside(path)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
        except BaseException:
            os.remove(tmp)
            raise
    return tmp


def _commit(staged: list[tuple[str, Path]]) -> None:
    """Rename staged temp files over their targets; any not renamed (an error on the way) are removed."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to `path` (renamed over it once written), with the mode a plain open would give: mkstemp
    makes 0600 whatever the umask, and results are meant to be read by others."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def _write_text_atomic(text: str, path: Path) -> None:
    with _writing(path):
        fd, tmp = _temp_beside(path)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def read_table(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise SpecError(f"{path} is a folder; give a results file (results/<name>.parquet)")
    if not path.is_file():
        raise SpecError(f"results file not found: {path}")
    try:
        return pq.read_table(path).to_pandas()
    # A damaged file fails in many ways: thrift or page decoding (ArrowInvalid, OSError), or its pandas metadata
    # (a JSON blob naming dtypes: TypeError, ValueError, KeyError); each is a file that cannot be read.
    except (pa.ArrowException, OSError, TypeError, ValueError, KeyError, IndexError) as e:
        raise SpecError(f"{path}: not a readable parquet file ({(str(e).splitlines() or [type(e).__name__])[0]})"
                        ) from None


def _raw_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in RAW_SAMPLES_SCHEMA.names if c not in df]
    if missing:
        raise SpecError(f"{path}: written by another mue-bench version (no {', '.join(missing)} columns); "
                        "rerun with --fresh")
    return df[RAW_SAMPLES_SCHEMA.names]


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def existing_ancestor(folder: Path) -> Path:
    """The folder itself, or the nearest folder above it that exists (where it would be created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


# A generous size of one per-sample row on disk beyond its per-token lists (ids, exits, scores, pair times):
# the free-space check errs towards a sweep that fits.
ROW_BYTES = 1024


def results_bytes(n_points: int, n_samples: int, max_len: int, depth: tuple[int, int]) -> int:
    """About the most a sweep's files take: every sample row with its per-token lists (tokens, decoder exits,
    a similarity per decoder layer) and encoder similarities, uncompressed, twice over (the finished points'
    parts are removed only once the final file is written)."""
    enc, dec = depth
    row = ROW_BYTES + 4 * (2 * max_len + max_len * dec + 2 * enc)
    return 2 * n_points * n_samples * row


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Refuse a sweep whose results clearly do not fit on the output folder's filesystem, before model work."""
    free = shutil.disk_usage(existing_ancestor(folder)).free
    if free < need:
        raise SpecError(f"output.dir {folder}: {what} need about {_size(need)} and its filesystem has {_size(free)} "
                        "free; free space, choose another output.dir, or shrink the grid or --limit")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"


def _check_output_dir(folder: Path) -> None:
    """Before any model work, creating nothing: the results folder exists or could be made, and is writable."""
    existing = existing_ancestor(folder)
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
        raise SpecError(f"output.dir {folder} {what}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"output.dir {folder}: {existing} is not writable; give a folder you can write to")


class SweepStore:
    """The files of one sweep: finished points (parts or final file), failures, and the final write."""

    def __init__(self, results: Path, samples: Path, context_hash: str, fresh: bool = False):
        self.results, self.samples, self.context = results, samples, context_hash
        self.parts = results.with_suffix(".parts")
        self.lock, self.fresh, self.locked = results.with_suffix(".lock"), fresh, False
        _check_output_dir(results.parent)
        if not fresh:
            self._check_context()  # read only: a mismatch is reported before any model work

    def open(self) -> SweepStore:
        """Take the folder for writing (once the model and data have loaded, so bad input leaves nothing
        behind): create it, take the lock, clear what an interrupted write left, and honour `fresh`."""
        self.results.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.locked = True
        self._remove_stale_temp_files()
        if self.fresh:
            for p in (self.results, self.samples):
                p.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        self._check_context()
        return self

    def _take_lock(self) -> None:
        """One writer per results file: a lock file naming its owner; one left by a dead process is taken over."""
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.lock.read_text())
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", 0))):
                    self.lock.unlink(missing_ok=True)  # stale: its sweep died without releasing it
                    continue
                raise MueBenchError(f"another sweep (pid {owner.get('pid', '?')} on {owner.get('host', '?')}) is "
                                    f"writing {self.results}; wait for it to finish, or delete {self.lock} "
                                    "if it is gone") from None
            try:
                with _writing(self.lock), os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except BaseException:
                self.lock.unlink(missing_ok=True)  # an empty lock would name no owner and block every rerun
                raise
            return

    def release(self) -> None:
        if self.locked:
            self.lock.unlink(missing_ok=True)
            self.locked = False

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _remove_stale_temp_files(self) -> None:
        """Temp files of a write that was interrupted (we hold the lock, so none is being written now)."""
        for folder, names in ((self.results.parent, (self.results.name, self.samples.name)), (self.parts, None)):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                if names is None or any(tmp.name.startswith(f".{n}.") for n in names):
                    tmp.unlink(missing_ok=True)

    def _check_context(self) -> None:
        found = None
        marker = self.parts / "context.json"
        if marker.is_file():
            found = json.loads(marker.read_text())["context_hash"]
        elif self.samples.is_file():
            meta = pq.read_schema(self.samples).metadata or {}
            found = meta.get(b"context_hash", b"").decode() or None
        if found is not None and found != self.context:
            raise MueBenchError(
                f"{self.samples.parent} holds results of this spec name made with a different model, data, "
                "decoding or batch setting; rerun with --fresh to replace them")

    def _part(self, point: str) -> Path:
        return self.parts / f"{point}.parquet"

    def finished(self) -> dict[str, pd.DataFrame]:
        """Per-sample raw rows of every finished point, by point id."""
        done: dict[str, pd.DataFrame] = {}
        if self.samples.is_file():
            df = _raw_columns(read_table(self.samples), self.samples)
            done.update({pid: g.reset_index(drop=True) for pid, g in df.groupby("point_id", sort=False)})
        if self.parts.is_dir():
            for part in sorted(self.parts.glob("*.parquet")):
                done[part.stem] = _raw_columns(read_table(part), part)
        return done

    def save_point(self, point: str, rows: pd.DataFrame) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        marker = self.parts / "context.json"
        if not marker.exists():
            _write_text_atomic(json.dumps({"context_hash": self.context}), marker)
        write_atomic(rows, RAW_SAMPLES_SCHEMA, self._part(point))
        (self.parts / f"{point}.failed.json").unlink(missing_ok=True)

    def save_failure(self, point: str, error: BaseException) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(json.dumps({"point_id": point, "type": type(error).__name__, "message": str(error)}),
                           self.parts / f"{point}.failed.json")

    def failures(self) -> dict[str, dict]:
        if not self.parts.is_dir():
            return {}
        return {p.name.removesuffix(".failed.json"): json.loads(p.read_text())
                for p in self.parts.glob("*.failed.json")}

    def finish(self, samples: pd.DataFrame, points: pd.DataFrame, keep_parts: bool) -> None:
        """Both final files, renamed into place only once both are written: a write that fails (a full disk)
        leaves the earlier pair, or none, and the parts a rerun resumes from."""
        meta = {"context_hash": self.context}
        staged = [(_staged(samples, SAMPLES_SCHEMA, self.samples, meta), self.samples)]
        try:
            staged.append((_staged(points, POINTS_SCHEMA, self.results, meta), self.results))
        except BaseException:
            os.remove(staged[0][0])
            raise
        _commit(staged)
        if not keep_parts:
            shutil.rmtree(self.parts, ignore_errors=True)


# Columns added after files were first written, with the value every older file's points had.
LATER_COLUMNS = {"exit_scope": "sample", "head_every_layer": False, "parity": False, "host": None}
def _finite_numbers(frame: pd.DataFrame, columns: list[str], path: Path, whole: bool = False) -> None:
    """Each column numeric (whole numbers where `whole`) and free of ±inf, which no sweep writes."""
    for c in columns:
        values = frame[c]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            raise SpecError(f"{path}: column {c} holds {values.dtype}, not numbers; rerun its sweep")
        if whole and not pd.api.types.is_integer_dtype(values):
            raise SpecError(f"{path}: column {c} holds {values.dtype}, not whole numbers; rerun its sweep")
        if np.isinf(values.to_numpy(float)).any():
            raise SpecError(f"{path}: column {c} holds an infinite value; rerun its sweep")


def checked_points(points: pd.DataFrame, path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A points table fit to analyse: the named columns (default: the whole schema) present and typed, at least
    one row, each point once, and a successful full-model row. Anything else is one line naming the file."""
    columns = columns or POINTS_SCHEMA.names
    points = points.assign(**{c: v for c, v in LATER_COLUMNS.items() if c not in points})
    missing = [c for c in columns if c not in points]
    if missing:
        raise SpecError(f"{path}: not a mue-bench results file of this version (no {', '.join(missing[:5])}"
                        f"{' …' if len(missing) > 5 else ''} columns); rerun its sweep")
    if points.empty:
        raise SpecError(f"{path}: no points in it; rerun its sweep")
    _finite_numbers(points, [c for c in columns if pa.types.is_floating(POINTS_SCHEMA.field(c).type)], path)
    for c in ("point_id", "status", "reference_id", "encoder_mode", "kv_fill", "dec_schedule", "quality_metric",
              "task", "split"):
        if c in columns and not points[c].map(lambda v: isinstance(v, str) or v is None).all():
            raise SpecError(f"{path}: column {c} holds values that are not text; rerun its sweep")
    if points["point_id"].isna().any():
        raise SpecError(f"{path}: a point has no point_id; rerun its sweep")
    if not pd.api.types.is_bool_dtype(points["is_full"]):
        raise SpecError(f"{path}: column is_full holds {points['is_full'].dtype}, not true/false; rerun its sweep")
    duplicated = points["point_id"][points["point_id"].duplicated()]
    if len(duplicated):
        raise SpecError(f"{path}: point {duplicated.iloc[0]} appears more than once; rerun its sweep with --fresh")
    if not ((points["status"] == "ok") & points["is_full"]).any():
        raise SpecError(f"{path}: no successful full-model point, which every saving divides by; rerun its sweep")
    return points


# What readers of a per-sample file use (bootstrap intervals, exit histograms, risk control).
SAMPLE_COLUMNS = ["point_id", "sample_index", "enc_img_layers", "enc_txt_layers", "dec_layers", "layers_used",
                  "flops", "correct", "cider", "consistency"]


def checked_samples(samples: pd.DataFrame, path: Path, points: pd.DataFrame) -> pd.DataFrame:
    """A per-sample table fit to analyse with its points: the columns readers use, typed, and the same samples,
    each once, for every successful point."""
    missing = [c for c in SAMPLE_COLUMNS if c not in samples]
    if missing:
        raise SpecError(f"{path}: not a mue-bench per-sample file of this version (no {', '.join(missing[:5])} "
                        "columns); rerun its sweep")
    _finite_numbers(samples, ["sample_index", "enc_img_layers", "enc_txt_layers", "layers_used"], path, whole=True)
    _finite_numbers(samples, ["flops", "correct", "cider", "consistency"], path)
    if not samples["dec_layers"].map(_whole_numbers).all():
        raise SpecError(f"{path}: column dec_layers holds values that are not lists of layer counts; rerun its sweep")
    if not samples["point_id"].map(lambda v: isinstance(v, str)).all():
        raise SpecError(f"{path}: column point_id holds values that are not text; rerun its sweep")
    ok = points.loc[points["status"] == "ok", "point_id"]
    per_point = samples.groupby("point_id")["sample_index"]
    if samples.duplicated(["point_id", "sample_index"]).any():
        raise SpecError(f"{path}: a sample appears more than once for one point; rerun its sweep with --fresh")
    lacking = [pid for pid in ok if pid not in per_point.groups]
    if lacking:
        raise SpecError(f"{path}: no samples of point {lacking[0]}, which {path.name.removesuffix('.samples.parquet')}"
                        ".parquet lists; rerun its sweep")
    indexes = {pid: frozenset(per_point.get_group(pid)) for pid in ok}
    if len(set(indexes.values())) > 1:
        raise SpecError(f"{path}: its points cover different samples; rerun its sweep with --fresh")
    return samples


def _whole_numbers(value: object) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return array.ndim == 1 and bool(np.isfinite(array).all()) and bool((array == np.round(array)).all())


def load_results(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Points and per-sample rows of one sweep, checked (see checked_points and checked_samples)."""
    points = checked_points(read_table(path), path)
    samples = samples_path_for(path)
    return points, checked_samples(read_table(samples), samples, points)
