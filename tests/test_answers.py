"""A closed answer set (decoding.answers): the decoder emits one of the answers and nothing else, with exits
on or off, as OFA scores SNLI-VE."""


import pytest
import torch

from mue_bench.errors import SpecError
from mue_bench.mue.config import NO_EXIT, ExitConfig
from mue_bench.run.prepare import prepare_inputs
from mue_bench.spec import load_spec
from tests.test_sweep import write_spec

ANSWERS = ("yes", "no", "maybe")


def _spec(tmp_path, shapes_root, checkpoint, answers: str):
    path = write_spec(tmp_path, shapes_root, checkpoint, task="entailment")
    path.write_text(path.read_text().replace("max_len = 6", f"max_len = 6\nanswers = {answers}"))
    return load_spec(path)


def test_every_prediction_is_one_of_the_answers(tmp_path, shapes_root, random_checkpoint):
    spec = _spec(tmp_path, shapes_root, random_checkpoint, '["yes", "no", "maybe"]')
    engine, samples, batches = prepare_inputs(spec, torch.device("cpu"))
    assert len(engine.decoding.answers) == 3 and all(a[-1] == engine.decoding.eos_id for a in engine.decoding.answers)
    free = prepare_inputs(spec.model_copy(update={"decoding": spec.decoding.model_copy(update={"answers": ()})}),
                          torch.device("cpu"))[0]
    seen_free = set()
    full = ExitConfig(NO_EXIT, NO_EXIT, NO_EXIT, encoder_mode="split")
    for cfg in (full, ExitConfig(0.5, 0.5, 0.3, encoder_mode="split")):
        for batch in batches:
            raw = engine.run(batch, cfg)
            assert {engine.text(t) for t in raw.tokens} <= set(ANSWERS)
            seen_free |= {free.text(t) for t in free.run(batch, cfg).tokens}
    assert not seen_free <= set(ANSWERS)  # the random model says other things when left free


def test_answers_outside_the_vocabulary_are_bad_input(tmp_path, shapes_root, random_checkpoint):
    spec = _spec(tmp_path, shapes_root, random_checkpoint, '["yes", "perhaps"]')
    with pytest.raises(SpecError, match="decoding.answers.*perhaps"):
        prepare_inputs(spec, torch.device("cpu"))


@pytest.mark.parametrize("answers, message", [('["yes", "yes"]', "repeat"), ('["yes", " "]', "empty")])
def test_answers_that_repeat_or_are_empty_are_refused_at_load(tmp_path, shapes_root, random_checkpoint, answers,
                                                              message):
    with pytest.raises(SpecError, match=f"decoding.answers.*{message}"):
        _spec(tmp_path, shapes_root, random_checkpoint, answers)
