"""transformers checkpoints as they ship, built offline: a generation_config.json with its own decoding settings.
No-exit output is compared with the model's own `generate()` run with nothing but the checkpoint's own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mue_bench.errors import SpecError
from mue_bench.models.hf import florence2
from mue_bench.models.hf.base import strip_after_eos
from mue_bench.models.hf.florence2 import Florence2Adapter
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch
from mue_bench.spec import Checkpoint


def _generate(adapter, batch, **overrides) -> list[list[int]]:
    """`generate()` with the checkpoint's own generation config (plus `overrides`), start token and padding off."""
    out = adapter.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 pixel_values=batch.pixel_values, **overrides)
    return [strip_after_eos(row[1:], adapter.eos) for row in out.tolist()]


def _no_exit(adapter, batch, decoding) -> list[list[int]]:
    return [s.tokens for s in run_batch(adapter, batch, ExitConfig(encoder_mode="freeze"), decoding).samples]


# --- the checkpoint's generation config -------------------------------------------------------------
FORCED_BOS, FORCED_EOS, MAX_LENGTH = 0, 2, 9  # Florence-2's: <s> first, </s> last


def _florence2_checkpoint(folder: Path, **generation) -> Path:
    """A tiny random Florence-2 saved with a generation_config.json that also sets `generation` (written into
    the file, as a published checkpoint may hold settings transformers would no longer save)."""
    florence2.random_florence2("tiny", seed=3).save(folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | generation))
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """As Florence-2 ships: forced BOS and EOS, an n-gram ban, beams, early stopping and a max_length."""
    folder = _florence2_checkpoint(tmp_path_factory.mktemp("f2") / "ckpt", forced_bos_token_id=FORCED_BOS,
                                   forced_eos_token_id=FORCED_EOS, no_repeat_ngram_size=3, num_beams=3,
                                   early_stopping=True, max_length=MAX_LENGTH)
    saved = json.loads((folder / "generation_config.json").read_text())
    assert saved["forced_eos_token_id"] == FORCED_EOS and saved["num_beams"] == 3
    adapter = Florence2Adapter.load(Checkpoint("folder", str(folder)))
    return adapter, florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)


@pytest.mark.parametrize("beams", [None, 1])  # the checkpoint's 3 beams, or greedy set by the spec
def test_no_exit_equals_generate_with_the_checkpoints_own_config(shipped, beams):
    adapter, batch = shipped
    decoding = adapter.decoding(num_beams=beams)
    assert (decoding.num_beams, decoding.max_len) == (beams or 3, MAX_LENGTH - 1)
    assert (decoding.forced_bos, decoding.forced_eos, decoding.no_repeat_ngram) == (FORCED_BOS, (FORCED_EOS,), 3)
    expected = _generate(adapter, batch, **({} if beams is None else {"num_beams": beams}))
    assert _no_exit(adapter, batch, decoding) == expected == adapter.reference_generate(batch, decoding)
    assert all(t[0] == FORCED_BOS for t in expected)
    assert any(len(t) == MAX_LENGTH - 1 and t[-1] == FORCED_EOS for t in expected)  # forced at the last step
    for b in range(batch.input_ids.shape[0]):
        one = batch.row(b)
        assert _no_exit(adapter, one, decoding) == _generate(adapter, one, **(
            {} if beams is None else {"num_beams": beams}))


def test_what_the_spec_sets_wins_over_the_checkpoint(shipped):
    adapter, batch = shipped
    decoding = adapter.decoding(num_beams=2, max_len=5, no_repeat_ngram=0)
    assert (decoding.num_beams, decoding.max_len, decoding.no_repeat_ngram) == (2, 5, 0)
    assert decoding.forced_eos == (FORCED_EOS,)  # unset by the spec: still the checkpoint's
    expected = _generate(adapter, batch, num_beams=2, max_new_tokens=5, no_repeat_ngram_size=0)
    assert _no_exit(adapter, batch, decoding) == expected == adapter.reference_generate(batch, decoding)


def test_ignore_decodes_without_the_checkpoints_settings(shipped, tmp_path):
    adapter, batch = shipped
    ignoring = Florence2Adapter.load(Checkpoint("folder", str(adapter.model.name_or_path)),
                                     generation_config="ignore")
    decoding = ignoring.decoding()
    assert (decoding.num_beams, decoding.max_len, decoding.forced_bos, decoding.forced_eos) == (1, 16, None, ())
    ours = _no_exit(ignoring, batch, decoding)
    assert ours == ignoring.reference_generate(batch, decoding)
    fresh = florence2.random_florence2("tiny", seed=3)  # the same weights with a default generation config
    assert ours == _generate(fresh, batch, max_new_tokens=16)
    assert ours != _no_exit(adapter, batch, adapter.decoding(num_beams=1, max_len=16))


def test_min_length_and_ignore_eos_with_a_forced_eos(tmp_path):
    folder = _florence2_checkpoint(tmp_path / "ckpt", forced_eos_token_id=FORCED_EOS, min_length=6)
    adapter = Florence2Adapter.load(Checkpoint("folder", str(folder)))
    batch = florence2.random_inputs(adapter, [7, 3, 5], florence2.SHAPES["tiny"]["image_size"], seed=0)
    decoding = adapter.decoding(max_len=12)
    assert decoding.min_new_tokens == 5  # min_length counts the start token
    expected = _generate(adapter, batch, max_new_tokens=12)
    assert all(len(t) >= 6 for t in expected)
    assert _no_exit(adapter, batch, decoding) == expected
    flat_out = adapter.decoding(max_len=7, ignore_eos=True)  # ignore_eos drops the forced EOS too
    ours = _no_exit(adapter, batch, flat_out)
    assert [len(t) for t in ours] == [7] * 3 and not any(FORCED_EOS in t for t in ours)
    assert ours == adapter.reference_generate(batch, flat_out)


@pytest.mark.parametrize(("field", "value"), [("do_sample", True), ("repetition_penalty", 1.3),
                                              ("suppress_tokens", [5]), ("bad_words_ids", [[7]])])
def test_a_setting_the_search_cannot_reproduce_is_refused_in_one_line(tmp_path, field, value):
    folder = _florence2_checkpoint(tmp_path / "ckpt", **{field: value})
    with pytest.raises(SpecError) as err:
        Florence2Adapter.load(Checkpoint("folder", str(folder)))
    message = str(err.value)
    assert "\n" not in message and "generation_config.json" in message and field in message
    assert 'decoding.generation_config = "ignore"' in message
    ignoring = Florence2Adapter.load(Checkpoint("folder", str(folder)), generation_config="ignore")
    assert ignoring.decoding().num_beams == 1


def test_sampling_settings_without_sampling_are_accepted(tmp_path):
    folder = _florence2_checkpoint(tmp_path / "ckpt", temperature=0.7, top_p=0.9, do_sample=False)
    assert Florence2Adapter.load(Checkpoint("folder", str(folder))).decoding().num_beams == 1
