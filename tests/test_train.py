"""Training: the layer-wise loss trains every layer; a few steps make the loss fall."""

import pytest
import torch

from mue_bench.training.tiny import TrainConfig, layer_losses, train


def test_a_few_steps_make_the_loss_fall(shapes_root, tmp_path):
    cfg = TrainConfig(data_root=str(shapes_root), steps=50, batch_size=8, d_model=32, n_heads=2, d_ff=64,
                      warmup=5, lr=3e-3)
    out = tmp_path / "ckpt"
    summary = train(cfg, out, log=lambda _: None)
    assert summary["final_layer_loss_last"] < summary["final_layer_loss_first"] - 0.5
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json",
                                               "train_config.json"}
    assert TrainConfig.model_validate_json((out / "train_config.json").read_text()) == cfg


def test_layerwise_loss_sums_every_layer_and_final_loss_only_the_last(shapes_root):
    cfg = TrainConfig(data_root=str(shapes_root), steps=1, batch_size=4, d_model=32, n_heads=2, d_ff=64)
    model = train(cfg, None, log=lambda _: None)["model"]
    states = [torch.randn(2, 3, 32) for _ in range(6)]
    targets = torch.randint(3, 10, (2, 3))
    every = layer_losses(model, states, targets, 0, "layerwise")
    last = layer_losses(model, states, targets, 0, "final")
    assert every.shape == (6,) and last.shape == (1,)
    assert torch.allclose(every[-1], last[0])


def test_sample_weighting_gives_a_one_token_target_the_same_weight_as_a_long_one():
    import torch.nn.functional as F

    from mue_bench.models.tiny.model import TinyConfig, TinyOFA

    torch.manual_seed(0)
    model = TinyOFA(TinyConfig(vocab_size=12, d_model=16, n_heads=2, d_ff=32))
    states = [torch.randn(2, 4, 16)]
    targets = torch.tensor([[5, 0, 0, 0], [6, 7, 8, 9]])  # a label word, and a 4-token caption (0 = pad)
    ce = F.cross_entropy(model.logits(states[0]).transpose(1, 2), targets, reduction="none")
    per_sample = (ce[0, 0] + ce[1].mean()) / 2
    per_token = (ce[0, 0] + ce[1].sum()) / 5
    assert torch.allclose(layer_losses(model, states, targets, 0, "final", "sample")[0], per_sample)
    assert torch.allclose(layer_losses(model, states, targets, 0, "final", "token")[0], per_token)


def test_a_second_stage_continues_from_its_first_stage_config(shapes_root, tmp_path):
    small = {"data_root": str(shapes_root), "batch_size": 8, "d_model": 32, "n_heads": 2, "d_ff": 64, "warmup": 2}
    first = tmp_path / "stage1.json"
    first.write_text(TrainConfig(steps=3, **small).model_dump_json())
    second = TrainConfig(steps=2, continue_from=str(first), loss_weighting="sample", entailment_fraction=0.75, **small)
    a = train(second, tmp_path / "a", log=lambda _: None)
    stage1 = train(TrainConfig.from_file(first), tmp_path / "s1", log=lambda _: None)
    b = train(second, tmp_path / "b", log=lambda _: None, init=tmp_path / "s1")
    assert stage1["steps"] == 3
    for (name, pa), pb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(pa, pb), name  # retraining stage 1 and loading it give the same stage 2


def test_a_cycle_of_stages_is_refused_in_one_line_before_any_training(tmp_path):
    from typer.testing import CliRunner

    from mue_bench.cli import app

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(TrainConfig(steps=1, continue_from=str(b)).model_dump_json())
    b.write_text(TrainConfig(steps=1, continue_from=str(a)).model_dump_json())
    result = CliRunner().invoke(app, ["train", "--config", str(a), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cycle" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_stages_lists_the_chain_first_stage_first(tmp_path):
    from mue_bench.training.tiny import stages

    first, second = tmp_path / "1.json", tmp_path / "2.json"
    first.write_text(TrainConfig(steps=1).model_dump_json())
    second.write_text(TrainConfig(steps=1, continue_from=str(first)).model_dump_json())
    assert stages(second) == [first, second]


def test_embedding_std_sets_the_position_and_modality_embeddings_and_nothing_else(shapes_root):
    small = dict(data_root=str(shapes_root), steps=1, lr=1e-9, batch_size=4, d_model=32, n_heads=2, d_ff=64)
    default = train(TrainConfig(**small), None, log=lambda _: None)["model"]
    scaled = train(TrainConfig(embedding_std=0.02, **small), None, log=lambda _: None)["model"]
    for name in ("text_pos", "dec_pos", "modality"):
        assert 0.5 < getattr(default, name).weight.std() < 2  # PyTorch's N(0, 1): the v1 recipe
        assert 0.01 < getattr(scaled, name).weight.std() < 0.04
    assert torch.allclose(default.tok_embed.weight, scaled.tok_embed.weight, atol=1e-6)


def test_image_pos_std_sets_the_image_position_embeddings_and_nothing_else(shapes_root):
    small = dict(data_root=str(shapes_root), steps=1, lr=1e-9, batch_size=4, d_model=32, n_heads=2, d_ff=64)
    default = train(TrainConfig(**small), None, log=lambda _: None)["model"]
    scaled = train(TrainConfig(image_pos_std=0.2, **small), None, log=lambda _: None)["model"]
    assert 0.01 < default.image_pos.std() < 0.04  # the model's own init
    assert 0.15 < scaled.image_pos.std() < 0.25
    for name in ("text_pos", "dec_pos", "modality", "tok_embed"):
        assert torch.allclose(getattr(default, name).weight, getattr(scaled, name).weight, atol=1e-6), name


def test_stem_channels_build_a_stem_that_trains_and_is_saved(shapes_root, tmp_path):
    from mue_bench.models.tiny.model import TinyOFA

    cfg = TrainConfig(data_root=str(shapes_root), steps=2, batch_size=4, d_model=32, n_heads=2, d_ff=64,
                      stem_channels=8)
    frozen = train(cfg.model_copy(update={"lr": 1e-12}), None, log=lambda _: None)["model"].stem[0].weight
    trained = train(cfg, tmp_path / "m", log=lambda _: None)["model"].stem[0].weight
    assert not torch.allclose(frozen, trained, atol=1e-6)  # the optimiser updates the stem
    assert TinyOFA.load(tmp_path / "m").cfg.stem_channels == 8


def test_image_positions_reach_the_model_and_its_checkpoint(shapes_root, tmp_path):
    from mue_bench.models.tiny.model import TinyOFA

    cfg = TrainConfig(data_root=str(shapes_root), steps=1, batch_size=4, d_model=32, n_heads=2, d_ff=64,
                      image_positions="sincos")
    model = train(cfg, tmp_path / "m", log=lambda _: None)["model"]
    assert model.image_pos_fixed.abs().sum() > 0
    assert TinyOFA.load(tmp_path / "m").cfg.image_positions == "sincos"


def test_encoder_exits_stop_a_share_of_samples_after_a_uniform_number_of_layers():
    import numpy as np

    from mue_bench.training.tiny import encoder_exits

    assert encoder_exits(np.random.default_rng(0), 8, 6, 0.0) is None  # the plain recipe runs every layer
    img, txt = encoder_exits(np.random.default_rng(0), 4000, 6, 1.0)
    assert set(img.tolist()) == set(txt.tolist()) == set(range(1, 7))
    assert not torch.equal(img, txt)  # each stream draws its own depth
    img, txt = encoder_exits(np.random.default_rng(0), 4000, 6, 0.5)
    assert abs(float((img < 6).float().mean()) - 0.5 * 5 / 6) < 0.03
    # the chosen half stops both streams (one may draw all 6 layers); the other half stops neither
    assert abs(float(((img < 6) | (txt < 6)).float().mean()) - 0.5 * (1 - 1 / 36)) < 0.03


def test_exit_training_changes_what_is_learned_and_zero_leaves_the_plain_recipe_alone(shapes_root):
    cfg = TrainConfig(data_root=str(shapes_root), steps=2, batch_size=8, d_model=32, n_heads=2, d_ff=64)
    weights = {fraction: train(cfg.model_copy(update={"encoder_exit_fraction": fraction}), None,
                               log=lambda _: None)["model"].state_dict()
               for fraction in (0.0, 1.0)}
    plain = train(cfg, None, log=lambda _: None)["model"].state_dict()
    assert all(torch.equal(plain[k], weights[0.0][k]) for k in plain)
    assert not all(torch.equal(plain[k], weights[1.0][k]) for k in plain)


def test_a_config_naming_no_data_folder_keeps_each_version_in_its_own():
    from mue_bench.data import shapes

    assert TrainConfig().data_root == f"data/shapes-v{shapes.DEFAULT_VERSION}"
    assert TrainConfig(data_version=2).data_root == "data/shapes-v2"
    assert TrainConfig(data_root="mine", data_version=2).data_root == "mine"


def test_train_itself_refuses_a_cycle_of_stages(shapes_root, tmp_path):
    from mue_bench.errors import SpecError

    a = tmp_path / "a.json"
    a.write_text(TrainConfig(data_root=str(shapes_root), steps=1, continue_from=str(a)).model_dump_json())
    with pytest.raises(SpecError, match="cycle"):
        train(TrainConfig.from_file(a), None, log=lambda _: None)
