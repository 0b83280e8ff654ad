"""Readers of results files check what they read: a damaged or foreign file is one line naming it, exit 2."""

import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from tests.test_cli import _fake
from tests.test_sweep import write_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, shapes_root, random_checkpoint):
    tmp = tmp_path_factory.mktemp("swept")
    spec = write_spec(tmp, shapes_root, random_checkpoint, task="entailment")
    assert runner.invoke(app, ["sweep", str(spec)], obj=_fake()).exit_code == 0
    return tmp / "results" / "t.parquet"


def _damaged(swept, tmp_path, change) -> str:
    points = pd.read_parquet(swept)
    out = tmp_path / "d.parquet"
    shutil.copy(swept.with_name("t.samples.parquet"), tmp_path / "d.samples.parquet")
    change(points).to_parquet(out)
    return str(out)


DAMAGE = {
    "a missing column": (lambda p: p.drop(columns=["quality_rel"]), "no quality_rel"),
    "no rows": (lambda p: p.iloc[:0], "no points in it"),
    "a duplicated point": (lambda p: pd.concat([p, p.iloc[:1]]), "appears more than once"),
    "no full-model row": (lambda p: p[~p["is_full"]], "no successful full-model point"),
    "a wrong type": (lambda p: p.assign(layer_savings="many"), "column layer_savings holds"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("command", [["pick"], ["plot"], ["check", "--baseline"]], ids=["pick", "plot", "check"])
def test_a_damaged_results_file_is_one_line_and_exit_2(case, command, swept, tmp_path):
    change, expected = DAMAGE[case]
    path = _damaged(swept, tmp_path, change)
    args = [command[0], str(swept), command[1], path] if len(command) == 2 else [command[0], path]
    if command[0] == "plot":
        args += ["--out", str(tmp_path / "plots")]
    result = runner.invoke(app, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and expected in result.output.replace("\n", ""), result.output
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("content", [None, b"", b"not parquet"], ids=["missing", "empty", "not parquet"])
def test_a_missing_or_unreadable_results_file_is_bad_input(content, tmp_path):
    path = tmp_path / "r.parquet"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(app, ["pick", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output and str(path) in result.output.replace("\n", "")


def test_typed_rows_have_the_schemas_fields_in_order():
    from dataclasses import fields

    from mue_bench.results import POINTS_SCHEMA, RAW_SAMPLES_SCHEMA, PointRow, SampleRow

    assert [f.name for f in fields(SampleRow)] == RAW_SAMPLES_SCHEMA.names
    provenance = POINTS_SCHEMA.names[POINTS_SCHEMA.names.index("run_id"):]
    assert [f.name for f in fields(PointRow)] + provenance == POINTS_SCHEMA.names


def test_a_misspelt_field_fails_where_the_row_is_made():
    import pytest

    from mue_bench.results import PointRow

    row = PointRow(point_id="p", reference_id="p", status="ok", is_full=True, tau_img=2.0, tau_txt=2.0, tau_dec=2.0,
                   encoder_mode="split", kv_fill="copy", dec_schedule="constant", exit_scope="sample",
                   head_every_layer=False)
    with pytest.raises(AttributeError):
        row.layer_saving = 0.5  # layer_savings
    with pytest.raises(TypeError):
        PointRow(point_id="p", reference_id="p", status="ok", is_full=True, tau_img=2.0, tau_txt=2.0, tau_dec=2.0,
                 encoder_mode="split", kv_fill="copy", dec_schedule="constant", exit_scope="sample",
                 head_every_layer=False, qualty=1.0)
@pytest.mark.parametrize("damage", ["float60", "no pandas_type"])
def test_a_results_file_with_damaged_pandas_metadata_is_bad_input(damage, swept, tmp_path):
    # what a flipped byte in the JSON that names each column's dtype does (the fuzz suite found both)
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(swept)
    meta = json.loads(table.schema.metadata[b"pandas"])
    for column in meta["columns"]:
        if damage == "float60":
            column.update(numpy_type="float60", pandas_type="float60")
        else:
            column.pop("pandas_type")
    path = tmp_path / "r.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()}),
                   path)
    result = runner.invoke(app, ["pick", str(path)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "not a readable parquet file" in lines[0], result.output
