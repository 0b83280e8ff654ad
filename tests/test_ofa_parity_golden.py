"""The parity settings (spec grid.parity) against the authors' MuE inference restated on ModelScope's OFA
(tools/ofa_reference/record_parity_golden.py, tests/fixtures/ofa/<config>/parity_goldens.json): split
encoder streams with the image stream's absolute bias only, batch-global cosines, no KV fill, the official
decoder schedule; greedy and beam 5, each prompt alone (the authors' batch 1) and the three padded together.
Generated ids and every exit (encoder streams, decoder layer per step) must be identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mue_bench.models.ofa.adapter import OFAAdapter, OFABatch
from mue_bench.models.ofa.config import OFAConfig
from mue_bench.models.ofa.model import OFAModel, load_weights
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch
from tests.ofa_fixture_checkpoints import load_shapes_doc, modelscope_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "ofa"
CONFIGS = sorted(p.name for p in FIXTURES.iterdir() if (p / "parity_goldens.json").is_file())


class ParityGolden:
    def __init__(self, name: str):
        from safetensors.torch import load_file

        folder = FIXTURES / name
        shapes, config = load_shapes_doc(str(folder))
        model = OFAModel(OFAConfig.from_dict(config))
        load_weights(model, modelscope_state_dict(shapes, config), f"{name} fixture")
        self.adapter = OFAAdapter(model)
        self.adapter.image_rel_bias = False  # the authors' image stream: absolute bias only
        self.doc = json.loads((folder / "parity_goldens.json").read_text())
        plain = json.loads((folder / "goldens.json").read_text())
        t = load_file(str(folder / "goldens.safetensors"))
        images = (t["images_u8"].float() / 255 - 0.5) / 0.5
        ids, pad = t["input_ids"], plain["special_ids"]["pad"]
        assert [r["prompt"] for r in plain["rows"]] == [r["prompt"] for r in self.doc["rows"]]
        self.batch = OFABatch(images[[r["image"] for r in plain["rows"]]], ids, ids.ne(pad))

    def rows(self, rows: list[int]) -> OFABatch:
        return self.batch if rows == list(range(len(self.batch.ids))) else self.batch.select(rows)

    def decoding(self, run: str):
        s = self.doc["settings"][run]
        assert s["max_len_a"] == 0 and s["min_len"] == 1 and s["len_penalty"] == 1.0 and s["normalize_scores"]
        assert s["unk_penalty"] == 0.0 and s["temperature"] == 1.0 and not s["match_source_len"]
        # fairseq's max_len_b tokens, then EOS: mue-bench's max_len counts the EOS
        return self.adapter.decoding(num_beams=s["beam_size"], max_len=s["max_len_b"] + 1,
                                     no_repeat_ngram=s["no_repeat_ngram_size"])


@pytest.fixture(scope="module", params=CONFIGS)
def golden(request) -> ParityGolden:
    return ParityGolden(request.param)


def _cases():
    for name in CONFIGS:
        doc = json.loads((FIXTURES / name / "parity_goldens.json").read_text())
        for triple, rec in doc["triples"].items():
            for run, per_batch in rec["runs"].items():
                for batch in per_batch:
                    yield pytest.param(name, triple, run, batch, id=f"{name}-{triple}-{run}-{batch}")


def parity(taus: dict) -> ExitConfig:
    return ExitConfig(taus["image"], taus["text"], taus["decoder"], encoder_mode="split", kv_fill="none",
                      dec_schedule="official", exit_scope="batch", head_every_layer=True)


@pytest.fixture(scope="module")
def goldens() -> dict[str, ParityGolden]:
    return {name: ParityGolden(name) for name in CONFIGS}


@pytest.mark.parametrize(("name", "triple", "run", "batch"), list(_cases()))
def test_parity_settings_reproduce_the_authors_exits_and_tokens(goldens, name, triple, run, batch):
    g = goldens[name]
    rec = g.doc["triples"][triple]
    ref = rec["runs"][run][batch]
    samples = run_batch(g.adapter, g.rows(ref["rows"]), parity(rec["taus"]), g.decoding(run)).samples
    assert [s.tokens for s in samples] == ref["tokens"]
    for b, s in enumerate(samples):
        assert (s.enc_img_layers, s.enc_txt_layers) == (ref["encoder_exit"]["image"], ref["encoder_exit"]["text"])
        assert s.dec_layers == [st["exit"] for st in ref["decoder_steps"] if b in st["samples"]], f"sample {b}"


def test_goldens_exit_at_varied_layers_with_a_margin(golden):
    """The recorded runs are not vacuous: each stream exits early somewhere and late elsewhere, the decoder
    stops at every depth, and no similarity that decides an exit lies within float noise of its threshold."""
    n_enc = golden.adapter.n_enc_layers
    n_dec = golden.adapter.n_dec_layers
    enc, dec = set(), set()
    for rec in golden.doc["triples"].values():
        for per_batch in rec["runs"].values():
            for ref in per_batch.values():
                enc.add((ref["encoder_exit"]["image"], ref["encoder_exit"]["text"]))
                dec.update(st["exit"] for st in ref["decoder_steps"])
                assert ref["min_margin"] is None or ref["min_margin"] > 1e-4
                assert ref["similarities_above_1"] == 0
    assert {e[0] for e in enc} & set(range(1, n_enc)) and n_enc in {e[0] for e in enc}
    assert {e[1] for e in enc} & set(range(1, n_enc)) and n_enc in {e[1] for e in enc}
    assert dec == set(range(1, n_dec + 1))
