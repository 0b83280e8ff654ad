"""A prompt longer than OFA's position tables is refused before any model work, in one line naming the sample,
its length and the limit, not as an IndexError mid-run; SNLI-VE's sentences are first cut to
max_src_length words, as OFA's task cuts them."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.data.loaders import Sample
from mue_bench.errors import SpecError
from mue_bench.models.ofa.adapter import OFAAdapter
from mue_bench.mue.rank import RankEngine
from mue_bench.spec import Checkpoint
from tests.test_ofa_inputs import bpe_dir  # noqa: F401 (a fixture)
from tests.test_ofa_sweep import _folder

runner = CliRunner()


@pytest.fixture
def adapter(tmp_path) -> OFAAdapter:
    return OFAAdapter.load(Checkpoint("folder", str(_folder(tmp_path / "ofa"))))  # 64 + 2 positions


def _entail(image, hypothesis: str, premise: str = "") -> Sample:
    return Sample("s7", image, "entailment", hypothesis=hypothesis, premise=premise, label="yes")


def test_the_tables_limit_and_a_long_prompt_is_one_line(adapter, shapes_root):
    image = next((shapes_root / "images").glob("*.png"))
    assert adapter.text_positions == adapter.decoder_positions == 66  # max_position_embeddings 64 + 2
    adapter.prepare([Sample("s1", image, "caption", prompt=" ".join(["w"] * 64))])  # 66 with <s> and </s>
    with pytest.raises(SpecError, match=r"^sample s2: its OFA source is 67 tokens, over the 66 text positions of "
                                        r"this checkpoint's position table; shorten the sample's own prompt$"):
        adapter.prepare([Sample("s2", image, "caption", prompt=" ".join(["w"] * 65))])


def test_snli_ve_sentences_are_cut_to_max_src_length_words_before_the_limit_applies(adapter, shapes_root):
    image = next((shapes_root / "images").glob("*.png"))
    long = " ".join(f"w{i}" for i in range(200))
    adapter.max_src_length = 20  # OFA's max_src_length, read from the checkpoint's ofa_task.json
    batch = adapter.prepare([_entail(image, long)])
    assert int(batch.mask.sum()) == len(adapter._words(' does the image describe " x "?')) - 1 + 20 + 2
    adapter.add_caption, adapter.max_src_length = True, 80
    with pytest.raises(SpecError, match=r"sample s7: its OFA source is \d+ tokens, over the 66 .*hypothesis and "
                                        r"premise are already cut to 80 words each.*or remove model.add_caption"):
        adapter.prepare([_entail(image, long, long)])


def test_the_checkpoints_max_src_length_is_read(tmp_path):
    folder = _folder(tmp_path / "ofa")
    (folder / "ofa_task.json").write_text(json.dumps({"patch_image_size": 64, "max_src_length": 12}))
    assert OFAAdapter.load(Checkpoint("folder", str(folder))).max_src_length == 12


def test_a_ranking_pass_past_the_decoder_table_is_refused_at_prepare(adapter, shapes_root):
    image = next((shapes_root / "images").glob("*.png"))
    adapter.prompt_type = "prev_output"
    sample = Sample("s3", image, "caption", prompt=" ".join(["w"] * 50))  # a 52-token source: the encoder fits
    decoding = replace(adapter.decoding(), answers=((5,) * 20 + (adapter.eos_id,), (6, adapter.eos_id)))
    with pytest.raises(SpecError, match=r"^sample s3: its ranking pass is 71 decoder positions \(a 51-token decoder "
                                        r"prompt and the longest answer\), over the 66 of this checkpoint's"):
        RankEngine(adapter, decoding).prepare([sample])
    RankEngine(adapter, replace(decoding, answers=((6, adapter.eos_id),))).prepare([sample])


def test_generation_past_the_decoder_table_is_refused(adapter):
    with pytest.raises(SpecError, match=r"decoding.max_len 67: .* holds 66 positions; set max_len <= 66"):
        adapter.decoding(max_len=67)


def test_the_cli_says_it_in_one_line_before_any_results(tmp_path, shapes_root):
    rows = [json.loads(line) for line in (shapes_root / "snli_ve_test.jsonl").read_text().splitlines()][:2]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "image": f"{r['Flickr30K_ID']}.png", "label": "yes",
                                        "hypothesis": " ".join(["word"] * 70)}) + "\n" for i, r in enumerate(rows)))
    spec = tmp_path / "long.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "long"
        [model]
        family = "ofa"
        checkpoint = "{_folder(tmp_path / 'ofa')}"
        [data]
        dataset = "jsonl"
        task = "entailment"
        annotations = "{data}"
        images = "{shapes_root / 'images'}"
        [decoding]
        answers = []  # no tokenizer to spell them with
        max_len = 3
        [grid]
        tau_dec = [2.0]
        [timing]
        warmup = 0
        [output]
        dir = "{tmp_path / 'results'}"
        """))
    result = runner.invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    assert "sample q0: its OFA source is" in result.output and "over the 66 text positions" in result.output
    assert "Traceback" not in result.output and "IndexError" not in result.output
    assert not (tmp_path / "results").exists()
