"""OFA's TSV data files (data/ofa_tsv.py): SNLI-VE and captioning lines with base64 images read as OFA's datasets
read them; a sweep over a TSV gives what the same samples give as image files; bad lines are one line naming the
file and line number, exit 2."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.data.loaders import TsvImage, check_images, load_snli_ve, open_image
from mue_bench.data.ofa_tsv import load_caption_tsv, load_snli_ve_tsv
from mue_bench.errors import SpecError
from mue_bench.models.ofa.inputs import preprocess_image
from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import load_spec
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_sweep import _folder

runner = CliRunner()


def _b64(path, urlsafe: bool = False) -> str:
    data = path.read_bytes()
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


def _snli_rows(shapes_root, n: int = 4) -> list[dict]:
    rows = [json.loads(line) for line in (shapes_root / "snli_ve_test.jsonl").read_text().splitlines()][:n]
    return [r | {"sentence1": f"a man {i}"} for i, r in enumerate(rows)]


def _snli_tsv(tmp_path, shapes_root, n: int = 4) -> tuple:
    """The shapes entailment pairs as OFA's snli_ve_test.tsv (uniq_id, image_id, image, hypothesis, caption,
    label) and as SNLI-VE's JSONL release, the same samples both ways; odd lines' base64 url-safe."""
    rows = _snli_rows(shapes_root, n)
    tsv = tmp_path / "snli_ve_test.tsv"
    tsv.write_text("".join("\t".join([r["pairID"], r["Flickr30K_ID"],
                                      _b64(shapes_root / "images" / f"{r['Flickr30K_ID']}.png", i % 2 == 1),
                                      r["sentence2"], r["sentence1"], r["gold_label"]]) + "\n"
                           for i, r in enumerate(rows)))
    jsonl = tmp_path / "snli_ve_test.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tsv, jsonl


def test_snli_ve_tsv_reads_as_ofas_dataset_does(tmp_path, shapes_root):
    tsv, jsonl = _snli_tsv(tmp_path, shapes_root)
    from_tsv = load_snli_ve_tsv(tsv)
    from_jsonl = load_snli_ve(jsonl, shapes_root / "images", "{id}.png")
    assert [(s.sample_id, s.hypothesis, s.premise, s.label, s.task) for s in from_tsv] == \
           [(s.sample_id, s.hypothesis, s.premise, s.label, s.task) for s in from_jsonl]
    assert all(isinstance(s.image, TsvImage) for s in from_tsv) and from_tsv[1].image.line == 2
    check_images(from_tsv)
    for a, b in zip(from_tsv, from_jsonl):  # the decoded image is the file's, pixel for pixel
        with open_image(a.image) as x, open_image(b.image) as y:
            assert torch.equal(preprocess_image(x, 32), preprocess_image(y, 32))
    assert len(load_snli_ve_tsv(tsv, limit=2)) == 2


def test_caption_tsv_splits_references_or_takes_a_coco_file(tmp_path, shapes_root):
    image = _b64(next((shapes_root / "images").glob("*.png")))
    tsv = tmp_path / "caption_test.tsv"
    tsv.write_text(f"u0\t42\tA red circle.&&a circle && \tcircle\t{image}\n\nu1\t43\tTwo squares\tsquare\t{image}\n")
    samples = load_caption_tsv(tsv)
    assert [s.sample_id for s in samples] == ["42", "43"] and samples[1].image.line == 3
    assert samples[0].references == ("A red circle.", "a circle") and samples[0].task == "caption"
    assert [s.sample_id for s in load_caption_tsv(tsv, (0, 4, 2))] == ["u0", "u1"]
    coco = tmp_path / "test_caption_coco_format.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 42, "caption": "one"}, {"image_id": 42,
                                                                                       "caption": "two"}]}))
    with_refs = load_caption_tsv(tsv, references=coco)
    assert with_refs[0].references == ("one", "two") and with_refs[1].references == ("Two squares",)
    check_images(samples)


@pytest.mark.parametrize(("line", "message"), [
    ("p1\t1\t{img}\ta hypothesis\ta premise", r"snli_ve_test.tsv:2: missing label \(column 5\): the line has 5"),
    ("p1\t1\t{img}\ta hypothesis\ta premise\tmaybe", r"snli_ve_test.tsv:2: unknown label 'maybe' \(column 5\)"),
    ("p1\t1\tnot base64!\ta hypothesis\ta premise\tneutral", r"snli_ve_test.tsv:2: column 2 is not valid base64"),
    ("p1\t1\taGVsbG8=\ta hypothesis\ta premise\tneutral", r"image unreadable: .*snli_ve_test.tsv:2 \(sample p1"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, shapes_root, line, message):
    tsv, _ = _snli_tsv(tmp_path, shapes_root, 1)
    img = _b64(next((shapes_root / "images").glob("*.png")))
    tsv.write_text(tsv.read_text() + line.format(img=img) + "\n")
    with pytest.raises(SpecError, match=message) as e:
        check_images(load_snli_ve_tsv(tsv))
    assert "\n" not in str(e.value)


def _spec(tmp_path, data: str, checkpoint, name: str = "tsv") -> object:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        [model]
        family = "ofa"
        checkpoint = "{checkpoint}"
        add_caption = true
        prompt_type = "prev_output"
        [data]
        task = "entailment"
        {data}
        [decoding]
        mode = "rank"
        [grid]
        tau_dec = [0.3, 2.0]
        encoder_mode = ["split"]
        [run]
        batch_size = 2
        [timing]
        warmup = 0
        [output]
        dir = "{tmp_path / name}"
        """))
    return path


def test_a_sweep_over_a_tsv_gives_what_the_image_files_give(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    folder = _folder(tmp_path / "ofa-tok", bpe_dir)
    tsv, jsonl = _snli_tsv(tmp_path, shapes_root)
    a = run_sweep(load_spec(_spec(tmp_path, f'dataset = "snli-ve-tsv"\nannotations = "{tsv}"', folder)),
                  SweepOptions(meteor=False))
    b = run_sweep(load_spec(_spec(tmp_path, f'dataset = "snli-ve"\nannotations = "{jsonl}"\n'
                                            f'images = "{shapes_root / "images"}"\nimage_pattern = "{{id}}.png"',
                                  folder, "jsonl")), SweepOptions(meteor=False))
    cols = ["point_id", "sample_index", "sample_id", "prediction", "enc_img_layers", "enc_txt_layers", "layers_used"]
    key = ["point_id", "sample_index"]
    x, y = (o.samples[cols].sort_values(key).reset_index(drop=True) for o in (a, b))
    assert x.equals(y) and a.points["n"].eq(4).all() and a.points["accuracy"].notna().all()


def test_the_cli_refuses_a_bad_tsv_before_any_model_work(tmp_path, shapes_root):
    tsv, _ = _snli_tsv(tmp_path, shapes_root, 2)
    tsv.write_text(tsv.read_text().replace("\tentailment\n", "\tyes\n").replace("\tneutral\n", "\tyes\n")
                   .replace("\tcontradiction\n", "\tyes\n"))
    result = runner.invoke(app, ["sweep", str(_spec(tmp_path, f'dataset = "snli-ve-tsv"\nannotations = "{tsv}"',
                                                    "random:tiny"))])
    assert result.exit_code == 2, result.output
    assert "snli_ve_test.tsv:1: unknown label 'yes'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "tsv").exists()


@pytest.mark.parametrize(("data", "message"), [
    ('dataset = "snli-ve-tsv"\nannotations = "x.tsv"\nimages = "imgs"', "holds its images in the TSV"),
    ('dataset = "snli-ve-tsv"', "needs 'annotations', the .tsv file"),
    ('dataset = "snli-ve"\nannotations = "x.jsonl"\nimages = "i"\ncolumns = [0, 1]', "'columns' picks the columns"),
    ('dataset = "snli-ve-tsv"\nannotations = "x.tsv"\nreferences = "r.json"', "'references' .* only"),
    ('dataset = "coco-caption-tsv"\nannotations = "x.tsv"', "task 'entailment' does not fit dataset"),
])
def test_tsv_spec_misuse_is_one_line(tmp_path, data, message):
    with pytest.raises(SpecError, match=message) as e:
        load_spec(_spec(tmp_path, data, "random:tiny"))
    assert "\n" not in str(e.value)
