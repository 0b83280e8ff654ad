"""Fuzzing the error contract: whatever spec or results file a user hands in, the command either works (exit 0)
or says what is wrong in one line with the documented exit code (2 for bad input; 1 only where documented),
with no traceback and nothing half-written.

Two generators:
- specs, as TOML text: well-formed specs whose fields take valid, wrongly typed, out-of-range and non-finite
  values, unknown keys and sections, ranges and grids of every size, bad checkpoints and devices; then the same
  text truncated or spliced, random text, and random bytes (non-UTF-8 included). Every one goes through
  `load_spec` and the grid listing; a sample also through `mue-bench sweep --dry-run`.
- damaged results files, built from one small valid sweep (the fake engine, once per module): columns dropped,
  retyped or filled with NaN, inf or junk, rows removed or duplicated, the per-sample file damaged or gone,
  bytes truncated, flipped or random. Each goes through `plot`, `pick` (budget and --risk) and `check` (as the
  current file and as the baseline).

The default profile runs a few hundred specs and a dozen results files (well under a minute). The long
profile runs at least 1,000 specs and 80 results files and prints what it saw (crashes, hangs, exit codes):

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.errors import SpecError
from mue_bench.spec import load_spec
from tests.test_cli import _fake
from tests.test_sweep import write_spec

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = {"ci": {"specs": 300, "dry_run": 0.1, "results": 12},
            "long": {"specs": 1200, "dry_run": 0.2, "results": 100}}[PROFILE]
HANG_S = 60.0  # one spec or one results file through every command; far more is a hang
SETTINGS = settings(max_examples=EXAMPLES["specs"], deadline=None, database=None, derandomize=PROFILE == "ci",
                    suppress_health_check=list(HealthCheck))
COUNTS: dict[str, Counter] = {kind: Counter(crashes=0, hangs=0) for kind in ("specs", "results")}

runner = CliRunner()


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def ring(signum, frame):
        raise Hang(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def tallied(counts: Counter) -> Iterator[None]:
    """Within HANG_S, counting a hang or a crash (anything raised but a failed assertion) before it propagates."""
    try:
        with time_limit(HANG_S):
            yield
    except Hang:
        counts["hangs"] += 1
        raise
    except AssertionError:
        raise
    except Exception:
        counts["crashes"] += 1
        raise


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with `folder` as the working directory, so relative paths in a spec land there, if anywhere."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    """What the generated cases did, printed past pytest's capture: counts of crashes, hangs and exit codes."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [f"fuzz ({PROFILE}) {kind}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
             for kind, counts in COUNTS.items() if counts.total()]
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


# --- specs -------------------------------------------------------------------------------------------------------

FINITE = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 0.99, 1e-7, 5e-324, 1e308, -1e308, 2.0000001]),
                   st.floats(allow_nan=False, allow_infinity=False))
FLOAT = st.one_of(FINITE, st.sampled_from([float("nan"), float("inf"), float("-inf")]))
INT = st.one_of(st.sampled_from([0, 1, 2, -1, 16, 17, 256, 257, 5000, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]),
                st.integers(-(2**70), 2**70))
TEXT = st.one_of(st.sampled_from(["", "mue-tiny", "random:nope", "random:tiny", "random:270m", "org/name", "/nope",
                                  "~nouser/x", "a" * 300, "cuda:7", "tpu", "cpu", "auto", "[/red]", "a\nb", "../x"]),
                 st.text(max_size=40))
SCALAR = st.one_of(FLOAT, INT, st.booleans(), TEXT)
ANY = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)

RANGE = st.fixed_dictionaries({"start": FLOAT, "stop": FLOAT, "step": FLOAT},
                              optional={"stride": FLOAT}).map(lambda d: {k: v for k, v in d.items() if k != "stride"}
                                                                 if len(d) == 3 or hash(str(d)) % 2 else d)
THRESHOLDS = st.one_of(st.lists(st.floats(-1.5, 2.5) | FLOAT, max_size=6), RANGE,
                       st.builds(lambda a, b, s: {"start": a, "stop": b, "step": s},
                                 st.floats(-1, 1), st.floats(-1, 1), st.sampled_from([0.1, 0.01, 0.005, 1e-4, 1e-7])),
                       ANY)


def _one_of(*values):
    return st.one_of(st.sampled_from(values), st.lists(st.sampled_from(values), max_size=3), ANY)


def _mostly(good, bad=ANY):
    """Mostly a plausible value, so that many specs get past their first field to the next."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 7 else good)  # (one_of would weigh them alike)


SMALL = st.integers(1, 8)
GOOD_THRESHOLDS = st.one_of(st.lists(st.floats(-1, 2), min_size=1, max_size=3),
                            st.builds(lambda a, n, s: {"start": a, "stop": a + n * s, "step": s},
                                      st.floats(-1, 0.5), st.integers(0, 8), st.sampled_from([0.1, 0.05, 0.01])))
FIELDS = {
    "model": {"family": _mostly(st.just("mue-tiny"), st.sampled_from(["florence2", "t5gemma2", "gpt5"]) | ANY),
              "checkpoint": _mostly(st.sampled_from(["mue-tiny", "mue-tiny-finalloss"]), TEXT | ANY),
              "trust_remote_code": _mostly(st.booleans()),
              "attn_implementation": _mostly(st.sampled_from(["sdpa", "eager"]), st.just("flash") | ANY)},
    "data": {"dataset": _mostly(st.just("shapes"), st.sampled_from(["coco-karpathy", "snli-ve", "jsonl", "x"]) | ANY),
             "task": _mostly(st.sampled_from(["caption", "entailment"]), st.just("vqa") | ANY),
             "split": _mostly(st.sampled_from(["test", "val"]), TEXT | ANY), "limit": _mostly(SMALL, INT | ANY),
             "root": _mostly(st.just("data/fuzz"), TEXT | ANY), "seed": _mostly(SMALL, INT | ANY),
             "version": _mostly(st.sampled_from([2, 3, 4]), INT | ANY), "annotations": TEXT | ANY,
             "images": TEXT | ANY, "image_pattern": TEXT | ANY},
    "decoding": {"num_beams": _mostly(st.integers(1, 4), INT | ANY), "max_len": _mostly(SMALL, INT | ANY),
                 "no_repeat_ngram": _mostly(st.integers(0, 3), INT | ANY), "ignore_eos": _mostly(st.booleans())},
    "grid": {"tau_img": _mostly(GOOD_THRESHOLDS, THRESHOLDS), "tau_txt": _mostly(GOOD_THRESHOLDS, THRESHOLDS),
             "tau_dec": _mostly(GOOD_THRESHOLDS, THRESHOLDS),
             "encoder_mode": _mostly(st.sampled_from([["split"], ["freeze"], ["split", "freeze"]]),
                                     _one_of("split", "freeze", "joint")),
             "kv_fill": _mostly(st.sampled_from([["copy"], ["propagate", "official"]]),
                                _one_of("copy", "propagate", "official", "smear")),
             "dec_schedule": _mostly(st.sampled_from([["constant"], ["official"]]), _one_of("official", "constant")),
             "fixed_exit": _mostly(st.lists(st.lists(SMALL, min_size=3, max_size=3), max_size=2),
                                   st.lists(st.lists(INT, min_size=2, max_size=4), max_size=3) | ANY),
             "max_points": _mostly(st.integers(1, 20000), INT | ANY)},
    "timing": {"warmup": _mostly(st.integers(0, 3), INT | ANY), "repeats": _mostly(SMALL, INT | ANY),
               "reference_repeats": _mostly(SMALL, INT | ANY), "batches": _mostly(SMALL, INT | ANY)},
    "run": {"batch_size": _mostly(SMALL, INT | ANY),
            "dtype": _mostly(st.sampled_from(["float32", "float16", "bfloat16"]), st.just("int8") | ANY),
            "device": _mostly(st.sampled_from(["cpu", "auto"]),
                              st.sampled_from(["cuda", "cuda:7", "tpu", "mps", "", "cuda:-1"]) | ANY),
            "seed": _mostly(SMALL, INT | ANY)},
    "output": {"dir": _mostly(st.just("results"), TEXT | ANY)},
}


@st.composite
def section(draw, name: str) -> dict:
    fields = FIELDS[name]
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    out = {k: draw(fields[k]) for k in chosen}
    if draw(st.integers(0, 29)) == 13:  # not 0 or 29, which hypothesis favours
        out[draw(TEXT)] = draw(ANY)  # an unknown key
    return out


@st.composite
def spec_doc(draw) -> dict:
    doc = {}
    if draw(st.booleans()):
        doc["name"] = draw(_mostly(st.sampled_from(["fz", "ok.name-1"]), st.sampled_from(["a b", ""]) | TEXT | ANY))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True)):
        doc[name] = draw(section(name)) if draw(st.integers(0, 19)) != 7 else draw(ANY)  # sometimes not a table
    if "name" not in doc and draw(st.booleans()):
        doc["name"] = "fz"
    if draw(st.integers(0, 9)) == 0:
        doc[draw(TEXT)] = draw(ANY)
    return doc


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_text(doc: dict) -> str:
    top = [f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"[{json.dumps(k, ensure_ascii=False)}]\n" + "".join(
        f"{json.dumps(f, ensure_ascii=False)} = {toml_value(x)}\n" for f, x in v.items())
        for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables)


@st.composite
def spec_bytes(draw) -> bytes:
    """TOML text of a generated spec (sometimes damaged on the way), random text, or random bytes."""
    kind = draw(st.sampled_from(["spec"] * 6 + ["damaged", "damaged", "text", "bytes", "encoded"]))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    text = toml_text(draw(spec_doc()))
    if kind == "encoded":
        return text.encode(draw(st.sampled_from(["latin-1", "utf-16", "utf-32"])), "replace")
    if kind == "damaged":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=10)) + text[cut + draw(st.integers(0, 20)):]
    return text.encode("utf-8", "surrogatepass")


def _assert_one_line(message: str, exit_code: int, expected: set[int]) -> None:
    lines = [ln for ln in message.splitlines() if ln.strip()]
    assert exit_code in expected, message
    assert "Traceback" not in message, message
    assert len(lines) == 1, message


@SETTINGS
@given(data=spec_bytes())
def test_every_spec_loads_or_is_refused_in_one_line(data):
    counts = COUNTS["specs"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "spec.toml"
        path.write_bytes(data)
        with tallied(counts):
            try:
                spec = load_spec(path)
                spec.points()
                spec.results_path()
                counts["loaded"] += 1
            except SpecError as e:
                counts["refused"] += 1
                _assert_one_line(str(e), 2, {2})
                assert str(path) in str(e), str(e)
            if zlib.crc32(data) % 100 < EXAMPLES["dry_run"] * 100:  # a sample, whatever hypothesis favours
                with inside(folder):
                    result = runner.invoke(app, ["sweep", str(path), "--dry-run"])
                counts[f"dry-run exit {result.exit_code}"] += 1
                if not (result.exception is None or isinstance(result.exception, SystemExit)):
                    counts["crashes"] += 1
                assert result.exception is None or isinstance(result.exception, SystemExit), result.output
                assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
                if result.exit_code:
                    _assert_one_line(result.output, result.exit_code, {2})
                assert sorted(p.name for p in folder.iterdir()) == ["spec.toml"]  # a dry run writes nothing


# --- results files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory, shapes_root, random_checkpoint) -> Path:
    """One small valid sweep (entailment, so scored without Java) by the fake engine: 5 points x 4 samples."""
    tmp = tmp_path_factory.mktemp("fuzz-swept")
    spec = write_spec(tmp, shapes_root, random_checkpoint, task="entailment")
    assert runner.invoke(app, ["sweep", str(spec)], obj=_fake()).exit_code == 0
    return tmp / "results" / "t.parquet"


JUNK = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1.0, 0.0, 2**62, "many", None, True])


@st.composite
def frame_damage(draw, columns: list[str]):
    """A function damaging a frame: columns dropped or refilled, a cell made NaN/inf, rows cut or repeated."""
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "fill", "cell", "rows", "astype", "status", "is_full"]))
        column = draw(st.sampled_from(columns))
        if kind == "drop":
            steps.append(lambda f, c=column: f.drop(columns=[c], errors="ignore"))
        elif kind == "fill":
            junk = draw(JUNK)
            steps.append(lambda f, c=column, v=junk: f.assign(**{c: [v] * len(f)}))
        elif kind == "cell":
            row, value = draw(st.integers(0, 30)), draw(st.sampled_from([float("nan"), float("inf"), -1e300]))

            def cell(f, c=column, r=row, v=value):
                if len(f) and c in f and pd.api.types.is_float_dtype(f[c]):
                    f = f.copy()
                    f.iloc[r % len(f), f.columns.get_loc(c)] = v
                return f
            steps.append(cell)
        elif kind == "rows":
            picks = draw(st.lists(st.integers(0, 30), max_size=8))
            steps.append(lambda f, p=picks: f.iloc[[i % len(f) for i in p]] if len(f) else f)
        elif kind == "astype":
            steps.append(lambda f, c=column: f.assign(**{c: f[c].astype(str)}) if c in f else f)
        elif kind == "status":
            status = draw(st.sampled_from(["failed", "weird", None]))
            steps.append(lambda f, v=status: f.assign(status=v) if "status" in f else f)
        else:
            full = draw(st.sampled_from([False, True, "yes", None]))
            steps.append(lambda f, v=full: f.assign(is_full=v) if "is_full" in f else f)

    def damage(frame: pd.DataFrame) -> pd.DataFrame:
        for step in steps:
            frame = step(frame)
        return frame

    return damage


@st.composite
def byte_damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "random", "empty"]))
    cut, flips = draw(st.floats(0, 1)), draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
    noise = draw(st.binary(max_size=300))

    def damage(data: bytes) -> bytes:
        if kind == "truncate":
            return data[:int(cut * len(data))]
        if kind == "flip":
            out = bytearray(data)
            for where, value in flips:
                out[int(where * (len(out) - 1))] = value
            return bytes(out)
        return noise if kind == "random" else b""

    return damage


@st.composite
def damaged_results(draw, points_columns: list[str], samples_columns: list[str]):
    """What to do to the points file and to its per-sample file (each: nothing, frame damage, byte damage, or for
    the per-sample file, delete it)."""
    which = draw(st.sampled_from(["points", "points", "samples", "both"]))

    def part(target: str, columns: list[str]):
        if which not in (target, "both"):
            return None
        kinds = ["frame", "frame", "bytes"] + (["gone"] if target == "samples" else [])
        kind = draw(st.sampled_from(kinds))
        return (kind, draw(frame_damage(columns)) if kind == "frame" else
                draw(byte_damage()) if kind == "bytes" else None)

    return part("points", points_columns), part("samples", samples_columns)


def _damage_file(src: Path, dst: Path, how) -> None:
    if how is None:
        shutil.copy(src, dst)
        return
    kind, fn = how
    if kind == "gone":
        return
    if kind == "bytes":
        dst.write_bytes(fn(src.read_bytes()))
        return
    frame = fn(pd.read_parquet(src))
    try:
        frame.to_parquet(dst)
    except Exception:  # a mix pyarrow cannot store: store its text
        frame.astype(str).to_parquet(dst)


# exit codes each command may give besides 0; exit 1 is documented for pick (no point qualifies) and check (a
# regression, or a baseline pick the current file lacks)
ALLOWED = {"plot": {2}, "pick": {1, 2}, "risk": {1, 2}, "check": {1, 2}, "baseline": {1, 2}}


def _run(name: str, args: list[str]):
    result = runner.invoke(app, args, terminal_width=200)
    if not (result.exception is None or isinstance(result.exception, SystemExit)):
        COUNTS["results"]["crashes"] += 1
    assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.output,
                                                                                 repr(result.exception))
    out = result.output
    assert result.exit_code in {0} | ALLOWED[name], (name, result.exit_code, out)
    assert "Traceback" not in out, (name, out)
    if result.exit_code == 2 or "error:" in out:
        _assert_one_line(out, result.exit_code, ALLOWED[name])
    elif result.exit_code == 1:  # the command's own report of an answer that is no
        assert any(s in out for s in ("no point keeps quality_rel", "no point passes", "FAILED")), (name, out)
    return result.exit_code


def test_damaged_results_files_are_read_or_refused_in_one_line(swept, tmp_path_factory):
    points_columns = list(pd.read_parquet(swept).columns)
    samples_columns = list(pd.read_parquet(swept.with_name("t.samples.parquet")).columns)

    @settings(SETTINGS, max_examples=EXAMPLES["results"])
    @given(damage=damaged_results(points_columns, samples_columns))
    def check(damage):
        counts = COUNTS["results"]
        folder = tmp_path_factory.mktemp("damaged")
        path = folder / "d.parquet"
        _damage_file(swept, path, damage[0])
        _damage_file(swept.with_name("t.samples.parquet"), folder / "d.samples.parquet", damage[1])
        report, plots = folder / "report.md", folder / "plots"
        commands = {"pick": ["pick", str(path)],
                    "risk": ["pick", str(path), "--risk", "0.5", "--confidence", "0.5", "--calibration-split", "test"],
                    "check": ["check", str(path), "--baseline", str(swept), "--report", str(report)],
                    "baseline": ["check", str(swept), "--baseline", str(path)],
                    "plot": ["plot", str(path), "--out", str(plots)]}
        try:
            with tallied(counts):
                for name, args in commands.items():
                    code = _run(name, args)
                    counts[f"{name} exit {code}"] += 1
                    if name == "check" and code == 2:
                        assert not report.exists()
                    if name == "plot" and code:
                        assert not plots.exists() or not any(plots.iterdir()), sorted(plots.iterdir())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        counts["files"] += 1

    check()


def test_the_generators_make_what_the_docstring_says():
    # the serialiser writes TOML that tomllib reads back as the same document
    import tomllib

    doc = {"name": "x", "grid": {"tau_img": [0.5, float("inf")], "a\nb": {"start": -1.0}}, "run": {"seed": 2**70}}
    back = tomllib.loads(toml_text(doc))
    assert back["grid"]["tau_img"][1] == float("inf") and back["grid"]["a\nb"] == {"start": -1.0}
    assert back["run"]["seed"] == 2**70 and np.isclose(back["grid"]["tau_img"][0], 0.5)
