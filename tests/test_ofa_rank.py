"""SNLI-VE as the MuE authors evaluate it (decoding.mode = "rank", model.add_caption, model.prompt_type), against
goldens recorded from the authors' code restated on ModelScope's OFA (tools/ofa_reference/record_rank_golden.py,
tests/fixtures/ofa/<config>/rank_goldens.json): the add_caption + prev_output inputs id for id, and eval_snli_ve's
scores (within 1e-4), chosen answer and decoder exit layer at no exit and at two thresholds, each sample alone and
three padded together. The sample-scope pass gives a sample the same result in a padded batch as alone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mue_bench.data.loaders import Sample
from mue_bench.models.ofa import inputs
from mue_bench.models.ofa.adapter import OFAAdapter, collate
from mue_bench.models.ofa.config import OFAConfig
from mue_bench.models.ofa.model import OFAModel, load_weights
from mue_bench.mue.config import NO_EXIT, ExitConfig
from mue_bench.mue.engine import run_batch
from mue_bench.mue.rank import RankEngine, run_rank
from tests.ofa_fixture_checkpoints import load_shapes_doc, modelscope_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "ofa"
CONFIGS = sorted(p.name for p in FIXTURES.iterdir() if (p / "rank_goldens.json").is_file())


class RankGolden:
    def __init__(self, name: str):
        from safetensors.torch import load_file

        folder = FIXTURES / name
        shapes, config = load_shapes_doc(str(folder))
        model = OFAModel(OFAConfig.from_dict(config))
        load_weights(model, modelscope_state_dict(shapes, config), f"{name} fixture")
        self.adapter = OFAAdapter(model)  # no tokenizer: words become ids as the recorder's stand-in BPE
        self.adapter.add_caption, self.adapter.prompt_type = True, "prev_output"
        self.doc = json.loads((folder / "rank_goldens.json").read_text())
        t = load_file(str(folder / "goldens.safetensors"))
        self.images = (t["images_u8"].float() / 255 - 0.5) / 0.5

    def sample(self, row: dict) -> Sample:
        return Sample(row["uniq_id"], Path("unused.png"), "entailment", hypothesis=row["hypothesis"],
                      premise=row["caption"], label=inputs.LABEL_TO_ANSWER[row["label"]])

    def batch(self, rows: list[int]):
        recs = [self.doc["rows"][b] for b in rows]
        ids = [self.adapter._source(self.sample(r)) for r in recs]
        return collate([self.images[r["image"]] for r in recs], ids, self.adapter.pad_id)

    def decoding(self, answer_set: str):
        answers = tuple((*a, self.adapter.eos_id) for a in self.doc["answer_sets"][answer_set]["answer_ids"])
        return replace(self.adapter.decoding(), answers=answers)


@pytest.fixture(scope="module")
def goldens() -> dict[str, RankGolden]:
    return {name: RankGolden(name) for name in CONFIGS}


def _cases():
    for name in CONFIGS:
        doc = json.loads((FIXTURES / name / "rank_goldens.json").read_text())
        for answer_set, rec in doc["answer_sets"].items():
            for run, r in rec["runs"].items():
                for batch in r["batches"]:
                    yield pytest.param(name, answer_set, run, batch, id=f"{name}-{answer_set}-dec={run}-{batch}")


# The authors' run: split streams with the image stream's absolute bias only, one cosine over the whole pass.
# kv_fill, the schedule and the per-layer head change nothing in a ranking pass: the parity settings must agree.
def authors(tau: float | None, **kw) -> ExitConfig:
    return ExitConfig(tau_dec=NO_EXIT if tau is None else tau, encoder_mode="split", exit_scope="batch", **kw)


PARITY = dict(kv_fill="none", dec_schedule="official", head_every_layer=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_add_caption_prev_output_inputs_are_the_tasks_id_for_id(goldens, name):
    g = goldens[name]
    for row in g.doc["rows"] + g.doc["inputs_only"]:
        sample = g.sample(row)
        assert inputs.entailment_text(sample.hypothesis, sample.premise) == row["source_text"]
        source = g.adapter._source(sample)
        assert source == row["source_ids"]
        batch = collate([g.images[0]], [source], g.adapter.pad_id)
        assert g.adapter.decoder_prompts(batch) == [row["decoder_prompt"]]
    long = g.doc["inputs_only"][0]
    assert len(long["hypothesis"].split()) > inputs.MAX_SRC_LENGTH  # the truncation is exercised


@pytest.mark.parametrize(("name", "answer_set", "run", "batch"), list(_cases()))
def test_rank_reproduces_the_authors_scores_answers_and_exits(goldens, name, answer_set, run, batch):
    g = goldens[name]
    rec = g.doc["answer_sets"][answer_set]["runs"][run]
    ref = rec["batches"][batch]
    g.adapter.image_rel_bias = False
    for cfg in (authors(rec["tau_dec"]), authors(rec["tau_dec"], **PARITY)):
        raw = run_rank(g.adapter, g.batch(ref["rows"]), cfg, g.decoding(answer_set))
        res = raw.result
        assert res.choice == ref["choice"]
        assert res.used.tolist() == [ref["exit_layer"]] * len(ref["rows"])
        assert torch.allclose(res.scores, torch.tensor(ref["scores"]), atol=1e-4, rtol=0)
        n = min(len(ref["sims"]), g.adapter.n_dec_layers - 1)
        assert torch.allclose(res.sims[0, :n], torch.tensor(ref["sims"][:n]), atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_goldens_exit_at_varied_layers_and_change_answers(goldens, name):
    g = goldens[name]
    n_dec = g.adapter.n_dec_layers
    exits, changed = set(), False
    for rec in g.doc["answer_sets"].values():
        full = rec["runs"]["none"]["batches"]
        for run in rec["runs"].values():
            for bname, ref in run["batches"].items():
                exits.add(ref["exit_layer"])
                changed |= ref["choice"] != full[bname]["choice"]
                assert ref["min_margin"] is None or ref["min_margin"] > 1e-3
    assert exits == set(range(1, n_dec + 1)) and changed


@pytest.mark.parametrize("name", CONFIGS)
def test_sample_scope_gives_a_sample_its_result_alone(goldens, name):
    """Prompts of different lengths and answers of different lengths: the padded pass, per sample, is each
    sample's own (exits, scores), at a threshold where the samples exit at different layers."""
    g = goldens[name]
    g.adapter.image_rel_bias = False
    decoding = g.decoding("multi")
    batch = g.batch([0, 1, 2])
    full = run_rank(g.adapter, batch, ExitConfig(encoder_mode="split"), decoding).result
    first = sorted(full.sims[:, 0].tolist())
    cfg = ExitConfig(tau_dec=(first[0] + first[1]) / 2, encoder_mode="split", head_every_layer=True)
    together = run_rank(g.adapter, batch, cfg, decoding).result
    assert len(set(together.used.tolist())) > 1
    for b in range(3):
        alone = run_rank(g.adapter, g.batch([b]), cfg, decoding).result
        assert together.used[b] == alone.used[0] and together.head_layers[b] == alone.head_layers[0]
        assert torch.allclose(together.scores[b], alone.scores[0], atol=1e-4, rtol=0)


def test_records_fit_the_results_schema(goldens):
    """The chosen answer is the tokens (so predictions are the answer words); one dec_layers entry per position;
    FLOPs grow with the layers run; a rank engine's batch result is the pass's."""
    g = goldens[CONFIGS[0]]
    g.adapter.image_rel_bias = False
    decoding = g.decoding("multi")
    engine = RankEngine(g.adapter, decoding)
    batch = g.batch([0, 1, 2])
    full = engine.run_batch(batch, ExitConfig(encoder_mode="split")).samples
    fixed = engine.run_batch(batch, ExitConfig(encoder_mode="split", fixed_exit=(2, 2, 1))).samples
    positions = [sum(len(p) + len(a) - 1 for a in decoding.answers)
                 for p in g.adapter.decoder_prompts(batch)]
    n_dec = g.adapter.n_dec_layers
    for s, f, n in zip(full, fixed, positions):
        assert tuple(s.tokens) in decoding.answers
        assert s.dec_layers == [n_dec] * n and f.dec_layers == [1] * n and len(s.dec_sims) == n
        assert s.layers_used == 2 * g.adapter.n_enc_layers + n * n_dec and f.flops < s.flops
    with pytest.raises(Exception, match="has no full-sequence decoder"):
        type(g.adapter).full_sequence = False
        try:
            RankEngine(g.adapter, decoding)
        finally:
            type(g.adapter).full_sequence = True
    # the generation engine is untouched by the new adapter members
    assert run_batch(g.adapter, batch, ExitConfig(encoder_mode="split"), g.adapter.decoding(max_len=3)).samples


@pytest.mark.parametrize("name", CONFIGS)
def test_a_lagged_encoder_ranks_exactly_as_an_eager_one(goldens, name):
    g = goldens[name]
    decoding = g.decoding("multi")
    batch = g.batch([0, 1, 2])
    full = run_rank(g.adapter, batch, ExitConfig(encoder_mode="split"), decoding)
    img = sorted(full.encoder.img_sims[:, 0].tolist())
    cfg = ExitConfig(tau_img=(img[0] + img[1]) / 2, tau_dec=float(full.result.sims[:, 0].median()),
                     encoder_mode="split")
    eager, lagged = (run_rank(g.adapter, batch, cfg, decoding, sync) for sync in ("eager", "lagged"))
    assert torch.equal(eager.encoder.img_layers, lagged.encoder.img_layers)
    assert len(set(eager.encoder.img_layers.tolist())) > 1  # the streams really exit at different layers
    assert eager.result.choice == lagged.result.choice and torch.equal(eager.result.used, lagged.result.used)
    assert torch.allclose(eager.result.scores, lagged.result.scores, atol=1e-6, rtol=0)
