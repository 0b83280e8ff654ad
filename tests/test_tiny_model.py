"""mue-tiny's image embedding: the optional convolutional stem and fixed 2-D positions, and the FLOPs the engine
charges for it."""

import pytest
import torch

from mue_bench.errors import MueBenchError
from mue_bench.models.tiny.model import TinyConfig, TinyOFA, sincos_grid
from mue_bench.mue import ExitConfig, run_batch
from mue_bench.mue.encoder import run_encoder
from tests.conftest import padded_batch, random_tiny


def test_a_stem_keeps_the_token_grid_and_adds_parameters_only_when_asked():
    plain = TinyOFA(TinyConfig(vocab_size=10, d_model=32, n_heads=2, d_ff=64))
    stem = TinyOFA(TinyConfig(vocab_size=10, d_model=32, n_heads=2, d_ff=64, stem_channels=8))
    images = torch.randn(2, 3, 48, 48)
    assert plain.embed_image(images).shape == stem.embed_image(images).shape == (2, 36, 32)
    assert not any(name.startswith("stem.") for name in plain.state_dict())  # older checkpoints still load
    assert {name for name in stem.state_dict() if name.startswith("stem.")} == {
        "stem.0.weight", "stem.0.bias", "stem.2.weight", "stem.2.bias"}


def test_a_stem_needs_an_even_patch_size():
    with pytest.raises(MueBenchError, match="patch_size"):
        TinyConfig(vocab_size=10, patch_size=7, image_size=49, stem_channels=8)


def test_a_stem_model_saves_and_loads_with_its_stem(tmp_path):
    adapter = random_tiny("joint", stem_channels=8)
    adapter.model.save(tmp_path / "m")
    loaded = TinyOFA.load(tmp_path / "m")
    assert loaded.cfg.stem_channels == 8
    images = padded_batch().images
    assert torch.equal(loaded.embed_image(images), adapter.model.embed_image(images))


def test_sincos_positions_tell_columns_apart_and_order_them_left_to_right():
    grid = sincos_grid(6, 32).view(6, 6, 32)  # [row, column, d]
    cols, rows = grid[..., :16], grid[..., 16:]
    assert torch.equal(cols[0], cols[5]) and torch.equal(rows[:, 0], rows[:, 5])  # each half sees one axis
    assert (grid.flatten(0, 1).std(0) > 0.1).all()  # every dimension varies over the grid
    lowest_cosine = cols[0, :, 8]
    assert (lowest_cosine.diff() < 0).all()  # monotone in the column: "left of" is one linear read-out
    assert torch.cdist(grid.flatten(0, 1), grid.flatten(0, 1)).fill_diagonal_(1.0).min() > 0.5  # all distinct


def test_sincos_positions_are_added_under_the_learned_table_and_not_saved(tmp_path):
    adapter = random_tiny("joint", image_positions="sincos")
    model, images = adapter.model, padded_batch().images
    assert "image_pos_fixed" not in model.state_dict()  # a function of the config: checkpoints are unchanged
    without = model.patch_embed(images).flatten(2).transpose(1, 2) + model.image_pos + model.modality.weight[0]
    torch.testing.assert_close(model.embed_image(images) - without, sincos_grid(6, 32).expand(3, -1, -1))
    model.save(tmp_path / "m")
    loaded = TinyOFA.load(tmp_path / "m")
    assert loaded.cfg.image_positions == "sincos"
    assert torch.equal(loaded.embed_image(images), model.embed_image(images))


def test_learned_positions_alone_are_the_default():
    model = TinyOFA(TinyConfig(vocab_size=10, d_model=32, n_heads=2, d_ff=64))
    assert model.cfg.image_positions == "learned" and not model.image_pos_fixed.any()


@pytest.mark.parametrize("bad, match", [(dict(image_positions="rope"), "image_positions"),
                                        (dict(image_positions="sincos", d_model=30, n_heads=2), "d_model")])
def test_bad_image_positions_are_rejected(bad, match):
    with pytest.raises(MueBenchError, match=match):
        TinyConfig(vocab_size=10, **bad)


@pytest.mark.parametrize("config", [dict(stem_channels=8), dict(image_positions="sincos")])
@pytest.mark.parametrize("beams", [1, 3])
def test_no_exit_reproduces_plain_generation_with_each_image_embedding(config, beams):
    adapter = random_tiny("joint", **config)
    batch, decoding = padded_batch(), adapter.decoding(num_beams=beams, max_len=12)
    got = run_batch(adapter, batch, ExitConfig(encoder_mode="freeze", kv_fill="propagate"), decoding)
    assert [s.tokens for s in got.samples] == adapter.reference_generate(batch, decoding)


@pytest.mark.parametrize("stem_channels", [0, 8])
@pytest.mark.parametrize("fixed", [None, (2, 3, 6), (2, 3, 1)])  # (2, 3, 1): decoder layers 2-6 never run
def test_engine_flops_agree_with_torch_flop_counter_image_embedding_included(stem_channels, fixed):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    adapter = random_tiny("joint", stem_channels=stem_channels)
    one = padded_batch().select([0])
    decoding = adapter.decoding(max_len=6, ignore_eos=True)
    embedding = adapter.input_flops(one)
    patch = adapter.model.patch_embed
    assert embedding >= 2 * 36 * patch.weight[0].numel() * patch.out_channels  # at least the patch projection
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the counter does not see CPU's fused flash kernel
        [sample] = run_batch(adapter, one, ExitConfig(encoder_mode="freeze", fixed_exit=fixed), decoding).samples
    head = 2 * adapter.model.tok_embed.weight.numel() * len(sample.tokens)  # the LM head is no layer
    assert sample.flops == pytest.approx(counter.get_total_flops() - head, rel=0.05)


@pytest.mark.parametrize("attention, mode", [("joint", "freeze"), ("split", "split")])
def test_stopping_streams_in_encode_equals_the_engine_exiting_them_there(attention, mode):
    """Training with exits (TrainConfig.encoder_exit_fraction) must train exactly what the engine runs."""
    adapter, batch = random_tiny(attention), padded_batch()
    stops = [(1, 4), (6, 2), (3, 6)]  # (image, text) layers per sample
    img, txt = (torch.tensor(s) for s in zip(*stops))
    with torch.no_grad():
        trained, mask = adapter.model.encode(batch.images, batch.ids, batch.mask, stop=(img, txt))
        for row, (i, t) in enumerate(stops):
            streams = adapter.embed_streams(batch)
            engine = run_encoder(adapter, streams, ExitConfig(encoder_mode=mode, fixed_exit=(i, t, 6)))
            assert (engine.img_layers[row], engine.txt_layers[row]) == (i, t)
            real = mask[row]
            torch.testing.assert_close(trained[row][real], engine.out[row][real])


def test_encode_without_stops_runs_every_layer():
    adapter, batch = random_tiny("joint"), padded_batch()
    full = torch.full((3,), 6)
    with torch.no_grad():
        torch.testing.assert_close(adapter.model.encode(batch.images, batch.ids, batch.mask, stop=(full, full)),
                                   adapter.model.encode(batch.images, batch.ids, batch.mask))
        early = adapter.model.encode(batch.images, batch.ids, batch.mask, stop=(full, torch.full((3,), 2)))[0]
    assert not torch.allclose(early, adapter.model.encode(batch.images, batch.ids, batch.mask)[0])
