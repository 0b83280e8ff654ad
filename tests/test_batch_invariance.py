"""A sample's exits and output do not depend on its batch-mates or on padding."""

import numpy as np
import pytest

from mue_bench.mue import ExitConfig, run_batch
from tests.conftest import RowCounter, padded_batch, random_tiny


def _median_thresholds(adapter, batch, mode):
    """Thresholds at the median observed similarity, so that some samples/tokens exit and some don't."""
    trace = run_batch(adapter, batch, ExitConfig(encoder_mode=mode), adapter.decoding(max_len=10))
    img = np.nanmedian([s.enc_img_sims for s in trace.samples])
    txt = np.nanmedian([s.enc_txt_sims for s in trace.samples])
    dec = np.nanmedian([x for s in trace.samples for step in s.dec_sims for x in step])
    return float(img), float(txt), float(dec)


def _case(attention: str, mode: str, fill: str, beams: int):
    """A random model, a padded batch of 3, median thresholds (so exits vary) and the decoding to use."""
    adapter = random_tiny(attention, seed=1)
    batch = padded_batch(seed=1)
    cfg = ExitConfig(*_median_thresholds(adapter, batch, mode), encoder_mode=mode, kv_fill=fill)
    return adapter, batch, cfg, adapter.decoding(num_beams=beams, max_len=10, no_repeat_ngram=3)


@pytest.mark.parametrize("attention,mode", [("split", "split"), ("joint", "freeze"), ("split", "freeze")])
@pytest.mark.parametrize("fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 2])
def test_batch_exits_equal_single_sample_exits(attention, mode, fill, beams):
    adapter, batch, cfg, decoding = _case(attention, mode, fill, beams)
    together = run_batch(adapter, batch, cfg, decoding).samples
    alone = [run_batch(adapter, batch.select([i]), cfg, decoding).samples[0] for i in range(3)]
    for t, a in zip(together, alone):
        assert t.tokens == a.tokens
        assert (t.enc_img_layers, t.enc_txt_layers) == (a.enc_img_layers, a.enc_txt_layers)
        assert t.dec_layers == a.dec_layers
    # the thresholds really produced early exits somewhere, and not everywhere
    dec_layers = [u for s in together for u in s.dec_layers]
    assert min(dec_layers) < 6 and max(dec_layers) == 6 or len(set(dec_layers)) > 1


@pytest.mark.parametrize("attention,mode", [("split", "split"), ("joint", "freeze")])
@pytest.mark.parametrize("fill", ["copy", "propagate", "official"])
@pytest.mark.parametrize("beams", [1, 2])
def test_batch_compaction_computes_only_active_rows_and_changes_no_result(attention, mode, fill, beams):
    adapter, batch, cfg, decoding = _case(attention, mode, fill, beams)
    counter = RowCounter(adapter)
    compacted = run_batch(adapter, batch, cfg, decoding).samples
    compacted_rows, counter.rows = counter.rows, 0
    adapter.row_subsets = False  # every layer on the whole batch, exited rows masked
    masked = run_batch(adapter, batch, cfg, decoding).samples
    assert compacted_rows < counter.rows
    for c, m in zip(compacted, masked):
        assert c.tokens == m.tokens and c.dec_layers == m.dec_layers
        assert (c.enc_img_layers, c.enc_txt_layers) == (m.enc_img_layers, m.enc_txt_layers)
        np.testing.assert_allclose(c.enc_img_sims, m.enc_img_sims, atol=1e-5)
        np.testing.assert_allclose(np.asarray(c.dec_sims, float), np.asarray(m.dec_sims, float), atol=1e-5)
        assert c.flops == m.flops
