"""decoding.mode = "rank", model.add_caption and model.prompt_type as spec fields: a sweep ranks SNLI-VE-style
answers after the source prompt with the premise in it, writes predictions accuracy is computed from; misuse is
one line naming the field; the SNLI-VE loader keeps the premise."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.data.loaders import load_jsonl, load_snli_ve
from mue_bench.errors import SpecError
from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.run.runner import SweepOptions, run_sweep
from mue_bench.spec import RANK_FAMILIES, load_spec
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_sweep import _folder

runner = CliRunner()


def _snli_with_premises(tmp_path, shapes_root, premise: bool = True):
    """The shapes benchmark's entailment pairs as SNLI-VE's JSONL release, with sentence1 (a caption)."""
    rows = [json.loads(line) for line in (shapes_root / "snli_ve_test.jsonl").read_text().splitlines()][:4]
    path = tmp_path / "snli_ve_test.jsonl"
    path.write_text("".join(json.dumps(r | ({"sentence1": f"A-man/{i} dogs"} if premise
                                           else {})) + "\n" for i, r in enumerate(rows)))
    return path


def _spec(tmp_path, annotations, images, checkpoint, model_extra="", decoding_extra='mode = "rank"', grid_extra=""):
    path = tmp_path / "rank.toml"
    path.write_text(textwrap.dedent(f"""
        name = "rank"
        [model]
        family = "ofa"
        checkpoint = "{checkpoint}"
        {model_extra}
        [data]
        dataset = "snli-ve"
        task = "entailment"
        annotations = "{annotations}"
        images = "{images}"
        image_pattern = "{{id}}.png"
        [decoding]
        {decoding_extra}
        [grid]
        tau_dec = [0.3, 2.0]
        encoder_mode = ["split"]
        {grid_extra}
        [run]
        batch_size = 2
        [timing]
        warmup = 0
        [output]
        dir = "{tmp_path / 'results'}"
        """))
    return path


def test_the_loader_keeps_snli_ves_premise(tmp_path, shapes_root):
    samples = load_snli_ve(_snli_with_premises(tmp_path, shapes_root), shapes_root / "images", "{id}.png")
    assert samples[0].premise == "A-man/0 dogs" and samples[0].hypothesis
    assert all(not s.premise for s in load_snli_ve(shapes_root / "snli_ve_test.jsonl", shapes_root, "{id}.png"))
    generic = tmp_path / "generic.jsonl"
    generic.write_text(json.dumps({"image": "a.png", "label": "yes", "hypothesis": "h", "premise": " p "}) + "\n")
    assert load_jsonl(generic, tmp_path, "entailment")[0].premise == "p"


def test_a_sweep_ranks_after_the_premise_prompt(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    folder = _folder(tmp_path / "ofa-tok", bpe_dir)
    annotations = _snli_with_premises(tmp_path, shapes_root)
    spec = load_spec(_spec(tmp_path, annotations, shapes_root / "images", folder,
                           'add_caption = true\nprompt_type = "prev_output"'))
    assert spec.decoding.answers == ("no", "yes", "maybe") and spec.decoding.mode == "rank"
    adapter = OFAAdapter.load(spec.model.resolved)
    adapter.add_caption = True
    sample = load_snli_ve(annotations, shapes_root / "images", "{id}.png")[0]
    assert adapter.tokenizer.decode(adapter._source(sample)[1:-1]).startswith(
        ' can image and text1 " a man 0 dogs " imply text2 "')
    out = run_sweep(spec, SweepOptions(meteor=False))
    assert set(out.samples["prediction"]) <= {"no", "yes", "maybe"}
    assert out.points["accuracy"].notna().all() and out.points["n"].eq(4).all()
    exits = out.points.set_index("point_id")
    assert exits.loc["img=off-txt=off-dec=0.3-split-copy-constant", "layer_savings"] > 0
    assert exits.loc["full-split", "layer_savings"] == 0


@pytest.mark.parametrize(("model_extra", "decoding_extra", "grid_extra", "message"), [
    ('prompt_type = "prev_output"', "", "", 'model.prompt_type "prev_output" .* set decoding.mode = "rank"'),
    ("", 'mode = "rank"\nanswers = []', "", 'decoding.mode "rank" scores the answers in decoding.answers, which is'),
    ("", 'mode = "rank"\nnum_beams = 5', "", 'decoding: mode "rank" scores every answer in one pass.*num_beams'),
    ("", 'mode = "rank"', 'dec_schedule = ["official", "constant"]', "grid.dec_schedule .* list one"),
    ("", 'mode = "rank"', 'kv_fill = ["copy", "none"]', "grid.kv_fill .* list one"),
    ("", 'mode = "ranked"', "", "decoding.mode: Input should be 'generate' or 'rank'"),
])
def test_rank_misuse_is_one_line(tmp_path, shapes_root, model_extra, decoding_extra, grid_extra, message):
    path = _spec(tmp_path, shapes_root / "snli_ve_test.jsonl", shapes_root / "images", "random:tiny",
                 model_extra, decoding_extra, grid_extra)
    with pytest.raises(SpecError, match=message) as e:
        load_spec(path)
    assert "\n" not in str(e.value)


def test_add_caption_without_premises_is_refused_before_the_model_loads(tmp_path, shapes_root):
    path = _spec(tmp_path, _snli_with_premises(tmp_path, shapes_root, premise=False), shapes_root / "images",
                 "random:tiny", "add_caption = true")
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2, result.output
    assert "model.add_caption: 4 of 4 samples" in result.output and "no premise" in result.output
    assert not (tmp_path / "results").exists()


def test_rank_is_refused_for_families_without_a_full_sequence_decoder(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\n[model]\nfamily = "mue-tiny"\n[data]\ntask = "entailment"\n'
                    '[decoding]\nmode = "rank"\nanswers = ["yes", "no"]\n')
    with pytest.raises(SpecError, match='decoding.mode "rank": the mue-tiny adapter has no full-sequence decoder'):
        load_spec(path)
    path.write_text('name = "t"\n[model]\nfamily = "mue-tiny"\nadd_caption = true\n')
    with pytest.raises(SpecError, match="model.add_caption is an OFA setting"):
        load_spec(path)


def test_rank_families_are_the_adapters_with_a_full_sequence_decoder():
    from mue_bench.models.hf.florence2 import Florence2Adapter
    from mue_bench.models.hf.t5gemma2 import T5Gemma2Adapter
    from mue_bench.models.tiny.adapter import TinyAdapter

    adapters = {"ofa": OFAAdapter, "mue-tiny": TinyAdapter, "florence2": Florence2Adapter,
                "t5gemma2": T5Gemma2Adapter}
    assert {f for f, a in adapters.items() if a.full_sequence} == set(RANK_FAMILIES)


def test_grid_reuse_of_untimed_batches_gives_what_running_them_gives(tmp_path, shapes_root, bpe_dir):  # noqa: F811
    """timing.batches: the untimed batches come from RankReuse (the encoder kept across decoder settings)."""
    folder = _folder(tmp_path / "ofa-tok", bpe_dir)
    annotations = _snli_with_premises(tmp_path, shapes_root)
    path = _spec(tmp_path, annotations, shapes_root / "images", folder,
                 'add_caption = true\nprompt_type = "prev_output"')
    full = run_sweep(load_spec(path), SweepOptions(meteor=False)).samples
    path.write_text(path.read_text().replace("warmup = 0", "warmup = 0\nbatches = 1")
                    .replace(str(tmp_path / "results"), str(tmp_path / "results-reuse")))
    reused = run_sweep(load_spec(path), SweepOptions(meteor=False)).samples
    cols = ["point_id", "sample_index", "prediction", "enc_img_layers", "enc_txt_layers", "layers_used", "flops"]
    key = ["point_id", "sample_index"]
    a, b = (f[cols].sort_values(key).reset_index(drop=True) for f in (full, reused))
    assert a.equals(b) and reused["latency_s"].isna().any()


def test_generation_grid_reuse_decodes_a_kept_encoding_after_a_batch_of_another_width(tmp_path, shapes_root,
                                                                                       bpe_dir):  # noqa: F811
    """A kept encoder result is decoded with the position biases of its own width, not of the batch embedded last
    (before the OFA adapter kept every width's, this raised)."""
    folder = _folder(tmp_path / "ofa-tok", bpe_dir)
    path = _spec(tmp_path, _snli_with_premises(tmp_path, shapes_root), shapes_root / "images", folder, "",
                 "max_len = 3")
    full = run_sweep(load_spec(path), SweepOptions(meteor=False)).samples
    path.write_text(path.read_text().replace("warmup = 0", "warmup = 0\nbatches = 1")
                    .replace(str(tmp_path / "results"), str(tmp_path / "results-reuse")))
    reused = run_sweep(load_spec(path), SweepOptions(meteor=False)).samples
    key = ["point_id", "sample_index"]
    a, b = (f[[*key, "prediction", "layers_used"]].sort_values(key).reset_index(drop=True) for f in (full, reused))
    assert a.equals(b)
