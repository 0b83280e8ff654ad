"""Sweep specs: one TOML file fully describes a run (model, data, grid, decoding, timing, output).

Specs are data: parsed with tomllib, validated with pydantic, never evaluated. A bad field gets one
line naming it (`SpecError`). Grid points have stable, filename-safe ids used for resume, logs and plots.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mue_bench.data.shapes import DEFAULT_VERSION, default_root
from mue_bench.errors import SpecError
from mue_bench.mue.config import NO_EXIT, ExitConfig

SWEEPS_DIR = Path("sweeps")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BUILTIN_DIR = Path(__file__).resolve().parent / "checkpoints"
# The random-weight shapes each transformers family offers (models/hf/*.py SHAPES holds their configs).
RANDOM_SHAPES: dict[str, tuple[str, ...]] = {"florence2": ("tiny", "base", "large"), "t5gemma2": ("tiny", "270m"),
                                             "ofa": ("tiny", "medium", "base", "large", "huge")}


@dataclass(frozen=True)
class Checkpoint:
    """What `model.checkpoint` names, decided once when the spec loads."""

    kind: Literal["builtin", "folder", "hub", "random"]
    ref: str  # the built-in name, the folder's path, the hub id, or the random shape

    @property
    def path(self) -> Path | None:
        """The folder the weights are read from, where it is known before loading."""
        if self.kind == "builtin":
            return BUILTIN_DIR / self.ref
        return Path(self.ref) if self.kind == "folder" else None

    def __str__(self) -> str:
        return f"random:{self.ref}" if self.kind == "random" else self.ref


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file())


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text


def parse_checkpoint(family: str, text: str) -> Checkpoint:
    """The one reading of a checkpoint string: a built-in name (mue-tiny), a local folder, a hub id
    ("org/name", transformers families only) or "random:<shape>" (random weights, transformers families)."""
    try:
        return _parse_checkpoint(family, text)
    except (OSError, RuntimeError) as e:  # a name too long for a path, ~nosuchuser, a folder we may not read
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"{_short(repr(text))} cannot be read as a folder ({reason})") from None


def _parse_checkpoint(family: str, text: str) -> Checkpoint:
    if text.startswith("random:"):
        shape = text.removeprefix("random:")
        shapes = RANDOM_SHAPES.get(family)
        if shapes is None:
            raise ValueError(f"random weights exist for {', '.join(RANDOM_SHAPES)} only, not {family!r}")
        if shape not in shapes:
            raise ValueError(f"unknown random shape {shape!r} for {family} (use one of "
                             f"{', '.join('random:' + s for s in shapes)})")
        return Checkpoint("random", shape)
    if family == "mue-tiny" and "/" not in text and (BUILTIN_DIR / text / "config.json").is_file():
        return Checkpoint("builtin", text)
    folder = Path(text).expanduser()
    convert = f"; convert it once with `mue-bench convert {text} <folder>`"
    if folder.is_dir():
        missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
        if family in ("mue-tiny", "ofa") and missing:
            has_bin = (folder / "pytorch_model.bin").is_file()
            hint = {"mue-tiny": " (mue-tiny checkpoints are safetensors)", "ofa": convert}[family] if has_bin else ""
            raise ValueError(f"folder {text} has no {' or '.join(missing)}{hint}")
        return Checkpoint("folder", str(folder))
    if folder.exists():
        if family == "ofa" and folder.suffix == ".pt":
            raise ValueError(f"{text} is a fairseq checkpoint (a pickle, never loaded as is){convert}")
        raise ValueError(f"{text} is a file; give the checkpoint folder that holds it")
    if family == "ofa":
        raise ValueError(f"folder {text} not found (OFA checkpoints are local folders written by "
                         "`mue-bench convert`, or random:<size>)")
    if family == "mue-tiny":
        raise ValueError(f"{text!r} is neither a built-in checkpoint ({', '.join(builtin_names())}) "
                         "nor an existing folder")
    if _looks_like_path(text):
        raise ValueError(f"folder {text} not found (a hub id has the form org/name)")
    return Checkpoint("hub", text)


class ModelSpec(_Strict):
    family: Literal["mue-tiny", "florence2", "t5gemma2", "ofa"] = "mue-tiny"
    # See parse_checkpoint: a built-in name, a folder, a hub id or "random:<shape>".
    checkpoint: str = "mue-tiny"
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # transformers models only
    # OFA only. False: the image stream without its relative position bias, as the authors' MuE encoder runs
    # it (set by grid.parity).
    image_rel_bias: bool = True
    # OFA only: SNLI-VE's source as OFA's task builds it with --add-caption, the premise (the image's Flickr30k
    # caption) before the hypothesis: ' can image and text1 " <premise> " imply text2 " <hypothesis> "?'
    # (snli_ve_dataset.py:157). The MuE SNLI-VE run uses it; the data must carry the premise.
    add_caption: bool = False
    # OFA only: what the decoder reads before the answer (snli_ve_dataset.py:160-171): "none" <s>, "src" the whole
    # source, "prev_output" the source without its </s> (the MuE SNLI-VE run). Other than "none" it needs
    # decoding.mode = "rank", where the answer is scored after it.
    prompt_type: Literal["none", "src", "prev_output"] = "none"

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: str, info: ValidationInfo) -> str:
        if "family" in info.data:  # else the family itself is wrong, and that error is the one to show
            parse_checkpoint(info.data["family"], v)
        return v

    @property
    def resolved(self) -> Checkpoint:
        return parse_checkpoint(self.family, self.checkpoint)


# OFA's TSV files (data/ofa_tsv.py): the images are base64 cells of the file itself.
TSV_DATASETS = {"snli-ve-tsv": "entailment", "coco-caption-tsv": "caption"}


class DataSpec(_Strict):
    dataset: Literal["shapes", "coco-karpathy", "snli-ve", "jsonl", "snli-ve-tsv", "coco-caption-tsv"] = "shapes"
    task: Literal["caption", "entailment"] = "caption"
    split: str = "test"
    limit: int | None = Field(default=None, ge=1)
    # shapes: generated here if missing (default data/shapes-v<version>); coco-karpathy / snli-ve: unused.
    root: str | None = None
    seed: int = 0
    version: Literal[2, 3, 4] = DEFAULT_VERSION  # shapes generator version; see data/shapes.py
    # coco-karpathy: dataset_coco.json; snli-ve, jsonl: the .jsonl file; the TSV datasets: the .tsv file
    annotations: str | None = None
    images: str | None = None  # image root (not for the TSV datasets: their images are in the file)
    image_pattern: str = "{id}.jpg"  # snli-ve: file name for a Flickr30K_ID
    # The TSV datasets: OFA's selected_cols (which columns hold what, in its order; default its run scripts'),
    # snli-ve-tsv uniq_id, image, hypothesis, caption, label (0,2,3,4,5); coco-caption-tsv id, image, caption
    # (1,4,2, the evaluation's).
    columns: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    # coco-caption-tsv: a COCO-format reference file (OFA's test_caption_coco_format.json, what its CIDEr is
    # computed against); its captions replace the TSV's "&&"-joined ones.
    references: str | None = None

    @model_validator(mode="after")
    def _task_matches_dataset(self) -> DataSpec:
        expected = {"coco-karpathy": "caption", "snli-ve": "entailment", **TSV_DATASETS}.get(self.dataset)
        if expected and self.task != expected:
            raise ValueError(f"task {self.task!r} does not fit dataset {self.dataset!r} (use {expected!r})")
        tsv = self.dataset in TSV_DATASETS
        if tsv and self.annotations is None:
            raise ValueError(f"dataset {self.dataset!r} needs 'annotations', the .tsv file")
        if tsv and self.images is not None:
            raise ValueError(f"dataset {self.dataset!r} holds its images in the TSV (base64); remove 'images'")
        if self.dataset not in ("shapes", *TSV_DATASETS) and (self.annotations is None or self.images is None):
            raise ValueError(f"dataset {self.dataset!r} needs both 'annotations' and 'images' paths")
        if self.columns is not None and not tsv:
            raise ValueError(f"'columns' picks the columns of OFA's TSV files; dataset {self.dataset!r} has none")
        if self.references is not None and self.dataset != "coco-caption-tsv":
            raise ValueError("'references' (a COCO-format caption file) is read by dataset \"coco-caption-tsv\" only")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_shapes_root(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("dataset", "shapes") == "shapes" and data.get("root") is None:
            return data | {"root": default_root(data.get("version", cls.model_fields["version"].default))}
        return data


class DecodingSpec(_Strict):
    num_beams: int = Field(default=1, ge=1, le=16)
    max_len: int = Field(default=16, ge=1, le=256)
    no_repeat_ngram: int = Field(default=0, ge=0)
    ignore_eos: bool = False  # always generate max_len tokens (speed benchmarks on random weights)
    # A closed answer set (e.g. ["yes", "no", "maybe"]): the decoder may only emit one of these, as OFA
    # scores SNLI-VE. Empty: free generation.
    answers: tuple[str, ...] = ()
    # transformers checkpoints: "checkpoint" takes what the spec leaves unset (beams, length, n-gram ban) and
    # the rest of the checkpoint's generation_config.json (forced BOS/EOS, min length, length penalty, early
    # stopping) from it, refusing settings the engine cannot reproduce; "ignore" decodes with defaults.
    generation_config: Literal["checkpoint", "ignore"] = "checkpoint"
    # "generate": search (greedy or beam; with answers, restricted to them token by token). "rank": every answer
    # scored by one teacher-forced decoder pass over [decoder prompt; answer], the best wins, as OFA evaluates
    # SNLI-VE (utils/eval_utils.py eval_snli_ve); the decoder's exit is decided once per layer over that pass
    # (mue/rank.py). No search, so num_beams, max_len, no_repeat_ngram and ignore_eos do not apply.
    mode: Literal["generate", "rank"] = "generate"

    @model_validator(mode="after")
    def _rank_has_no_search(self) -> DecodingSpec:
        if self.mode != "rank":
            return self
        if self.num_beams != 1 or self.no_repeat_ngram or self.ignore_eos:
            bad = "num_beams" if self.num_beams != 1 else "no_repeat_ngram" if self.no_repeat_ngram else "ignore_eos"
            raise ValueError(f"mode \"rank\" scores every answer in one pass, with no search; remove {bad}")
        return self

    @field_validator("answers")
    @classmethod
    def _answers_distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_answers(v)


def check_answers(v: tuple[str, ...]) -> tuple[str, ...]:
    """A closed answer set (decoding.answers, a fine-tuning config's answers): each non-empty, each once (a
    ValueError, for the validators)."""
    if any(not a.strip() for a in v):
        raise ValueError("an answer is empty; list the words the decoder may emit, e.g. [\"yes\", \"no\"]")
    if len(set(v)) != len(v):
        raise ValueError(f"answers repeat: {list(v)}; list each once")
    return v


# More thresholds than this in one range is a typo in `step` (a grid of them would never finish).
MAX_RANGE_VALUES = 1000


class Range(_Strict):
    start: float = Field(allow_inf_nan=False)
    stop: float = Field(allow_inf_nan=False)
    step: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _sound(self) -> Range:
        if self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step:g})")
        if self.stop < self.start:
            raise ValueError(f"stop {self.stop:g} is below start {self.start:g}")
        steps = (self.stop - self.start) / self.step  # inf for ranges like -1e308..1e308 or a step of 5e-324
        if not (math.isfinite(steps) and round(steps) + 1 <= MAX_RANGE_VALUES):
            many = f"{round(steps) + 1}" if math.isfinite(steps) else "too many"
            raise ValueError(f"{many} thresholds from start to stop at step {self.step:g}; at most "
                             f"{MAX_RANGE_VALUES} (is the step a typo?)")
        return self

    def count(self) -> int:
        return int(round((self.stop - self.start) / self.step)) + 1

    def values(self) -> list[float]:
        return [round(self.start + i * self.step, 10) for i in range(max(self.count(), 0))]


Thresholds = list[float] | Range


# What `grid.parity = true` sets: the authors' released code, behaviour for behaviour (DESIGN.md §1).
PARITY: dict[str, list] = {"encoder_mode": ["split"], "kv_fill": ["none"], "dec_schedule": ["official"],
                           "exit_scope": ["batch"], "head_every_layer": [True]}


class GridSpec(_Strict):
    tau_img: Thresholds = [NO_EXIT]
    tau_txt: Thresholds = [NO_EXIT]
    tau_dec: Thresholds = [NO_EXIT]
    # freeze is exact for joint encoders (the shipped mue-tiny, Florence-2); split is the authors' streams
    encoder_mode: list[Literal["split", "freeze"]] = ["freeze"]
    kv_fill: list[Literal["copy", "propagate", "official", "none"]] = ["copy"]
    dec_schedule: list[Literal["official", "constant"]] = ["constant"]
    # The authors' released code (mue/config.py ExitConfig): the similarity of the whole batch at once, and the
    # LM head after every executed decoder layer.
    exit_scope: list[Literal["sample", "batch"]] = ["sample"]
    head_every_layer: list[bool] = [False]
    # MuE exactly as the authors' code runs it: every setting in PARITY (and, for OFA, the image stream without
    # its relative position bias). Each stays available on its own.
    parity: bool = False
    # Benchmarking mode: exit after exactly these layer counts [img, txt, dec], ignoring similarity.
    fixed_exit: list[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]] = []
    # A grid larger than this is refused as a likely typo; raise it here for a grid you mean (up to a million:
    # one more would take weeks at a second a point, and its listing alone minutes).
    max_points: int = Field(default=5000, ge=1, le=1_000_000)

    @field_validator("tau_img", "tau_txt", "tau_dec")
    @classmethod
    def _in_range(cls, v: Thresholds) -> Thresholds:
        values = v.values() if isinstance(v, Range) else v
        if not values:
            raise ValueError("empty threshold list")
        bad = [t for t in values if not -1.0 <= t <= 2.0]
        if bad:
            raise ValueError(f"threshold {bad[0]} outside [-1, 2] (cosine similarity lies in [-1, 1]; "
                             "a value above 1 means no exit)")
        return v

    @field_validator("encoder_mode", "kv_fill", "dec_schedule", "exit_scope", "head_every_layer")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("empty list")
        return v

    @model_validator(mode="before")
    @classmethod
    def _parity(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("parity") is not True:
            return data
        for key, value in PARITY.items():
            if key in data and list(data[key]) != value:
                raise ValueError(f"parity = true sets {key} = {value}, but the grid gives {key} = "
                                 f"{data[key]}; remove one of them")
        return data | PARITY

    @model_validator(mode="after")
    def _not_too_large(self) -> GridSpec:
        def count(v: Thresholds) -> int:
            return v.count() if isinstance(v, Range) else len(v)

        settings = (len(self.encoder_mode) * len(self.kv_fill) * len(self.dec_schedule) * len(self.exit_scope)
                    * len(self.head_every_layer))
        n = settings * (count(self.tau_img) * count(self.tau_txt) * count(self.tau_dec) + len(self.fixed_exit))
        if n > self.max_points:
            raise ValueError(f"{n} grid points, more than max_points = {self.max_points}; "
                             "shrink the grid or raise grid.max_points")
        return self


# More runs of every batch than this would never finish: a typo.
MAX_REPEATS = 10_000


class TimingSpec(_Strict):
    warmup: int = Field(default=1, ge=0, le=MAX_REPEATS)
    # Timed runs of each batch per point; each is paired with a full-model run of the same batch, back to back
    # (scoring/paired.py), so a point's time saving never compares two different states of the machine.
    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS)
    # The full model's own row (its wall_s and latencies) is timed max(repeats, reference_repeats) times.
    reference_repeats: int = Field(default=3, ge=1, le=MAX_REPEATS)
    # Time only the first `batches` batches of every point (run in full, as deployed, and paired); evaluate the
    # other samples with grid reuse (mue/grid_reuse.py): encoder outputs shared across decoder settings,
    # generations shared by samples that reach the same exits, and a point whose exit decisions a stored run
    # makes the same way served by that run (certificates); in rank mode (mue/rank.py RankReuse) the encoder
    # shared likewise and a stored ranking pass certifying a point's tau_dec. None: every batch is timed, nothing
    # is reused.
    batches: int | None = Field(default=None, ge=1)
    # How the layer loops learn which rows are still active (mue/sync.py): "eager" reads each layer's exit flags
    # before launching the next (a host sync per layer); "lagged" launches the next layer first and reads them
    # while it is queued, dropping a layer that ran for nobody. The same decisions either way, so it is no part of
    # a point's identity; only the wall clock can tell them apart (benchmarks/realization.py --exit-sync).
    exit_sync: Literal["eager", "lagged"] = "eager"


class RunSpec(_Strict):
    batch_size: int = Field(default=1, ge=1, le=1_000_000)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    seed: int = Field(default=0, ge=0, lt=2**63)  # torch.manual_seed takes 64-bit seeds
    # Where the grid runs: "local", this process; "ray", worker actors on a Ray cluster (run/ray_executor.py),
    # each with the model loaded once. Neither changes the results, so neither is part of a spec's identity.
    executor: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: "auto" (the cluster this node runs), "host:port"; none: start Ray here
    workers: int | None = Field(default=None, ge=1)  # ray: default one per GPU of the cluster
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float | None = Field(default=None, ge=0)  # default: 1 where the cluster has GPUs, else 0


# RunSpec fields that say where the sweep runs, not what it computes.
EXECUTOR_FIELDS = {"executor", "address", "workers", "cpus_per_worker", "gpus_per_worker"}

# Context fields that came after results files began recording their context hash: hashed only when set away from
# their default, so a results file written before a field existed (its points made with that default) resumes.
# A field added to the model, data or decoding sections belongs here unless its default changes what is computed.
LATER_CONTEXT_FIELDS = {"model": {"add_caption", "prompt_type"}, "data": {"columns", "references"},
                        "decoding": {"mode"}}


def _context_part(section: str, part: BaseModel) -> dict:
    later = LATER_CONTEXT_FIELDS.get(section, set())
    fields = type(part).model_fields
    return {k: v for k, v in part.model_dump().items() if k not in later or v != fields[k].get_default()}


class OutputSpec(_Strict):
    dir: str = "results"


# SNLI-VE's candidates in OFA's label order (tasks/mm_tasks/snli_ve.py:28).
OFA_ANSWERS = ("no", "yes", "maybe")
# The families whose adapter has the full-sequence decoder call a ranking pass needs (`ExitAdapter.full_sequence`;
# tests/test_rank.py checks the two agree): decoding.mode = "rank" is refused for the others when the spec loads.
RANK_FAMILIES = ("ofa",)


def check_ofa_prompt(model: ModelSpec, data: DataSpec) -> None:
    """model.add_caption and model.prompt_type are OFA's SNLI-VE task settings: refused for other families and
    other tasks (a ValueError, for the sweep's and the fine-tuning config's validators)."""
    for name, default in (("add_caption", False), ("prompt_type", "none")):
        if getattr(model, name) != default and model.family != "ofa":
            raise ValueError(f"model.{name} is an OFA setting (its SNLI-VE task's); remove it for {model.family}")
    if model.add_caption and data.task != "entailment":
        raise ValueError("model.add_caption puts SNLI-VE's premise in the prompt; it needs data.task = "
                         "\"entailment\"")
    if model.prompt_type != "none" and data.task != "entailment":
        raise ValueError(f"model.prompt_type \"{model.prompt_type}\" is OFA's SNLI-VE decoder prompt; it needs "
                         "data.task = \"entailment\"")


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    decoding: DecodingSpec = DecodingSpec()
    grid: GridSpec = GridSpec()
    run: RunSpec = RunSpec()
    timing: TimingSpec = TimingSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="before")
    @classmethod
    def _ofa_ranks_entailment_answers(cls, data: object) -> object:
        """OFA scores SNLI-VE by ranking its answers, not by free generation (snli_ve.py): the default there."""
        if not isinstance(data, dict):
            return data
        model, task, decoding = (data.get(k) for k in ("model", "data", "decoding"))
        if (isinstance(model, dict) and model.get("family") == "ofa" and isinstance(task, dict)
                and task.get("task", "caption") == "entailment"
                and (decoding is None or isinstance(decoding, dict) and "answers" not in decoding)):
            return data | {"decoding": (decoding or {}) | {"answers": list(OFA_ANSWERS)}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _parity_drops_ofas_image_bias(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        model, grid = data.get("model"), data.get("grid")
        if not (isinstance(model, dict) and model.get("family") == "ofa" and isinstance(grid, dict)
                and grid.get("parity") is True):
            return data
        if model.get("image_rel_bias") is True:
            raise ValueError("grid.parity = true sets model.image_rel_bias = false (the authors' image stream); "
                             "remove one of them")
        return data | {"model": model | {"image_rel_bias": False}}

    @model_validator(mode="after")
    def _image_rel_bias_is_ofas(self) -> SweepSpec:
        if not self.model.image_rel_bias and self.model.family != "ofa":
            raise ValueError(f"model.image_rel_bias is an OFA setting; {self.model.family} has no such bias")
        return self

    @model_validator(mode="after")
    def _ofa_prompt_settings(self) -> SweepSpec:
        m = self.model
        check_ofa_prompt(m, self.data)
        if m.prompt_type != "none" and self.decoding.mode != "rank":
            raise ValueError(f"model.prompt_type \"{m.prompt_type}\" feeds the source to the decoder before the "
                             "answer, which only a ranking pass scores; set decoding.mode = \"rank\"")
        return self

    @model_validator(mode="after")
    def _rank_fits(self) -> SweepSpec:
        """A ranking pass needs answers, a family with a full-sequence decoder call, and one cache fill and one
        schedule: it has no cache and no steps, so each of those would only rename the same computation."""
        if self.decoding.mode != "rank":
            return self
        if self.model.family not in RANK_FAMILIES:
            raise ValueError(f"decoding.mode \"rank\": the {self.model.family} adapter has no full-sequence decoder "
                             f"call (families with one: {', '.join(RANK_FAMILIES)}); use mode = \"generate\"")
        if not self.decoding.answers:
            raise ValueError("decoding.mode \"rank\" scores the answers in decoding.answers, which is empty; list "
                             "them, e.g. [\"no\", \"yes\", \"maybe\"]")
        if self.data.task == "caption":
            raise ValueError("decoding.mode \"rank\" picks one of a closed set of answers; data.task \"caption\" "
                             "generates text (use mode = \"generate\")")
        for key in ("kv_fill", "dec_schedule"):
            values = getattr(self.grid, key)
            if len(values) > 1:
                raise ValueError(f"grid.{key} {values}: a ranking pass (decoding.mode \"rank\") has no cache and no "
                                 f"steps, so every {key} computes the same; list one")
        return self

    @model_validator(mode="after")
    def _kv_fill_none_fits(self) -> SweepSpec:
        """`kv_fill = "none"` leaves a skipped layer one entry short: every row of a layer must skip together,
        and the model's cache must hold a different length per layer. A ranking pass has no cache."""
        if "none" not in self.grid.kv_fill or self.decoding.mode == "rank":
            return self
        if self.model.family in ("florence2", "t5gemma2"):
            raise ValueError(f"grid.kv_fill \"none\": the {self.model.family} cache (transformers') keeps one "
                             "length for every layer; use copy, propagate or official")
        if "sample" in self.grid.exit_scope and self.run.batch_size > 1:
            raise ValueError("grid.kv_fill \"none\" with exit_scope \"sample\" needs run.batch_size = 1 (rows "
                             "of a batch would keep different numbers of entries); set exit_scope = [\"batch\"] "
                             "or batch_size = 1")
        return self

    # --- grid ------------------------------------------------------------------------------------
    def points(self) -> list[ExitConfig]:
        """Every grid point, the full model first (one per encoder mode), duplicates removed. Two distinct
        settings that would share an id are refused: the store would keep one and drop the other."""
        g = self.grid

        def vals(v: Thresholds) -> list[float]:
            return v.values() if isinstance(v, Range) else list(v)

        settings = list(itertools.product(g.encoder_mode, g.kv_fill, g.dec_schedule, g.exit_scope, g.head_every_layer))
        full = [ExitConfig(encoder_mode=m, head_every_layer=h) for m, h in itertools.product(g.encoder_mode,
                                                                                             g.head_every_layer)]
        grid = [ExitConfig(ti, tt, td, m, f, s, exit_scope=e, head_every_layer=h)
                for (m, f, s, e, h), ti, tt, td in itertools.product(settings, vals(g.tau_img), vals(g.tau_txt),
                                                                     vals(g.tau_dec))]
        fixed = [ExitConfig(encoder_mode=m, kv_fill=f, dec_schedule=s, fixed_exit=tuple(x), exit_scope=e,
                            head_every_layer=h)
                 for (m, f, s, e, h), x in itertools.product(settings, g.fixed_exit)]
        by_id: dict[str, ExitConfig] = {}
        for cfg in full + grid + fixed:
            cfg = cfg.canonical()
            other = by_id.setdefault(cfg.point_id, cfg)
            if other != cfg:
                raise SpecError(f"grid: thresholds ({other.tau_img!r}, {other.tau_txt!r}, {other.tau_dec!r}) and "
                                f"({cfg.tau_img!r}, {cfg.tau_txt!r}, {cfg.tau_dec!r}) share the point id "
                                f"{cfg.point_id}; make them differ")
        return list(by_id.values())

    def overridden(self, limit: int | None = None, device: str | None = None, **run: object) -> SweepSpec:
        """This spec with the command line's --limit / --device and [run] fields (--executor, --address,
        --workers), where given (not None)."""
        data = self.data.model_copy(update={"limit": limit}) if limit else self.data
        updates = {k: v for k, v in {"device": device, **run}.items() if v is not None}
        unknown = set(updates) - set(RunSpec.model_fields)
        if unknown:
            raise TypeError(f"not [run] fields: {', '.join(sorted(unknown))}")
        try:
            run = RunSpec.model_validate(self.run.model_dump() | updates)
        except ValidationError as e:
            raise SpecError(describe_validation_error(e, "command line").replace(": ", ": --", 1)) from None
        return self.model_copy(update={"data": data, "run": run})

    # --- identity ---------------------------------------------------------------------------------
    def context_hash(self) -> str:
        """What makes two points' results comparable: model, data, decoding, batch, dtype, seed."""
        ctx = {name: _context_part(name, getattr(self, name)) for name in ("model", "data", "decoding")}
        ctx["run"] = self.run.model_dump(exclude={"device"} | EXECUTOR_FIELDS)
        return hashlib.sha256(json.dumps(ctx, sort_keys=True).encode()).hexdigest()[:16]

    def spec_hash(self) -> str:
        """Everything that defines the results; where they are written, and which executor ran them, do not."""
        exclude = {"output": True, "run": EXECUTOR_FIELDS}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    def results_path(self) -> Path:
        return Path(self.output.dir) / f"{self.name}.parquet"

    def samples_path(self) -> Path:
        return self.results_path().with_name(f"{self.name}.samples.parquet")


def _short(text: str, limit: int = 80) -> str:
    """A value quoted in a one-line message, cut where it would drown the line."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _location(e: dict) -> str:
    """The dotted field path of one pydantic error. Union tags ("Range", "list[float]") and list indexes are
    left out; an unknown key is the user's own and always named, quoted if it is not a plain word."""
    parts = list(e["loc"])
    unknown = str(parts.pop()) if e["type"] == "extra_forbidden" and parts else None
    kept = [str(p) for p in parts if (not isinstance(p, int) or len(e["loc"]) == 1)
            and not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
    if unknown is not None:
        kept.append(unknown if re.fullmatch(r"[A-Za-z0-9_-]+", unknown) else _short(json.dumps(unknown)))
    return ".".join(kept)


def validation_problem(err: ValidationError) -> tuple[str, str]:
    """The field and the one-line message of the error to show: of a union's errors (a threshold list or a
    range), the most specific, not a wrong-type one, deepest first."""
    e = min(err.errors(), key=lambda x: (x["type"].endswith("_type"), -len(x["loc"])))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif e["type"] != "missing" and not isinstance(e.get("input"), dict):
        msg += f" (got {_short(repr(e['input']))})"
    return _location(e), msg


def describe_validation_error(err: ValidationError, source: str) -> str:
    loc, msg = validation_problem(err)
    return f"{source}: {loc or 'spec'}: {msg}"


def load_spec(path: Path) -> SweepSpec:
    if path.is_dir():
        raise SpecError(f"{path} is a folder; give a spec file (e.g. sweeps/demo.toml)")
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start}); save the spec as UTF-8") from None
    except (ValueError, RecursionError) as e:  # TOMLDecodeError, an integer of thousands of digits, deep nesting
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0]
        raise SpecError(f"{path}: not valid TOML ({_short(reason, 120)})") from None
    raw.setdefault("name", path.stem)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, str(path))) from None
