"""Training: the layer-wise loss trains every layer; a few steps make the loss fall; recipes chain stages."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mue_bench.errors import SpecError
from mue_bench.training import expand_recipe, run_recipe
from mue_bench.training.loop import layer_losses
from mue_bench.training.tiny import TrainConfig, train, train_stages

SMALL = {"batch_size": 8, "d_model": 32, "n_heads": 2, "d_ff": 64, "warmup": 2}


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
    every = layer_losses(model.logits, states, targets, 0, "layerwise")
    last = layer_losses(model.logits, states, targets, 0, "final")
    assert every.shape == (6,) and last.shape == (1,)
    assert torch.allclose(every[-1], last[0])


def test_sample_weighting_gives_a_one_token_target_the_same_weight_as_a_long_one():
    from mue_bench.models.tiny.model import TinyConfig, TinyOFA

    torch.manual_seed(0)
    model = TinyOFA(TinyConfig(vocab_size=12, d_model=16, n_heads=2, d_ff=32))
    states = [torch.randn(2, 4, 16)]
    targets = torch.tensor([[5, 0, 0, 0], [6, 7, 8, 9]])  # a label word, and a 4-token caption (0 = pad)
    ce = F.cross_entropy(model.logits(states[0]).transpose(1, 2), targets, reduction="none")
    per_sample = (ce[0, 0] + ce[1].mean()) / 2
    per_token = (ce[0, 0] + ce[1].sum()) / 5
    assert torch.allclose(layer_losses(model.logits, states, targets, 0, "final", "sample")[0], per_sample)
    assert torch.allclose(layer_losses(model.logits, states, targets, 0, "final", "token")[0], per_token)


def test_log_probs_through_the_loss_give_what_logits_give():
    """The built-in model passes logits, a transformers model log-probs: the loss is the same."""
    torch.manual_seed(0)
    logits = [torch.randn(3, 5, 11) * 4 for _ in range(2)]
    targets = torch.tensor([[4, 5, 0, 0, 0], [6, 7, 8, 9, 10], [3, 0, 0, 0, 0]])
    for weighting in ("token", "sample"):
        from_logits = layer_losses(lambda h: h, logits, targets, 0, "layerwise", weighting)
        from_logprobs = layer_losses(lambda h: h.log_softmax(-1), logits, targets, 0, "layerwise", weighting)
        torch.testing.assert_close(from_logprobs, from_logits)


def _reference_train(cfg: TrainConfig) -> dict:
    """The built-in model's training written out in one piece, as it was before the loop was shared with the
    transformers models: the shared loop must keep its numerics bit for bit."""
    from mue_bench.data import shapes
    from mue_bench.models.tiny.inputs import collate, load_pixels, pad, prompt
    from mue_bench.models.tiny.model import TinyConfig, TinyOFA
    from mue_bench.models.tiny.tokenizer import WordTokenizer
    from mue_bench.training.loop import target_text
    from mue_bench.training.tiny import encoder_exits, training_samples

    torch.set_num_threads(cfg.threads)
    samples = training_samples(shapes.ensure(cfg.data_root, cfg.data_seed, version=cfg.data_version), "train")
    captions = [s for s in samples if s.task == "caption"]
    entail = [s for s in samples if s.task == "entailment"]
    tok = WordTokenizer.build([prompt(s) for s in samples] + [r for s in captions for r in s.references]
                              + ["yes no maybe"])
    torch.manual_seed(cfg.seed)
    model = TinyOFA(TinyConfig(vocab_size=len(tok), d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                               encoder_attention=cfg.encoder_attention))
    torch.manual_seed(cfg.seed)
    rng, exit_rng = np.random.default_rng(cfg.seed), np.random.default_rng([cfg.seed, 1])
    pixels = {p: load_pixels(p, 48) for p in {s.image for s in samples}}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup) * 0.5 * (
        1 + np.cos(np.pi * min(step, cfg.steps) / cfg.steps)))
    model.train()
    for _ in range(cfg.steps):
        half = cfg.batch_size - round(cfg.batch_size * cfg.entailment_fraction)
        batch = ([captions[i] for i in rng.integers(len(captions), size=half)]
                 + [entail[i] for i in rng.integers(len(entail), size=cfg.batch_size - half)])
        inputs = collate([pixels[s.image] for s in batch], [prompt(s) for s in batch], tok)
        targets = [tok.encode(target_text(s, rng)) for s in batch]
        dec_in, _ = pad([[tok.bos_id] + t[:-1] for t in targets], tok.pad_id)
        dec_out, _ = pad(targets, tok.pad_id)
        enc = model.encode(inputs.images, inputs.ids, inputs.mask,
                           encoder_exits(exit_rng, len(batch), 6, cfg.encoder_exit_fraction))
        real = (dec_out != tok.pad_id).float()
        losses = []
        for h in model.decoder_states(dec_in, *enc)[(0 if cfg.loss == "layerwise" else -1):]:
            ce = F.cross_entropy(model.logits(h).transpose(1, 2), dec_out, ignore_index=tok.pad_id, reduction="none")
            losses.append(((ce * real).sum(1) / real.sum(1).clamp(min=1)).mean() if cfg.loss_weighting == "sample"
                          else (ce * real).sum() / real.sum())
        opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.state_dict()


@pytest.mark.parametrize("settings", [{}, {"loss_weighting": "sample", "encoder_exit_fraction": 0.5,
                                           "encoder_attention": "joint", "loss": "final"}], ids=["plain", "exits"])
def test_the_shared_loop_trains_the_built_in_model_bit_for_bit_as_written_out(shapes_root, settings):
    cfg = TrainConfig(data_root=str(shapes_root), steps=4, **SMALL, **settings)
    got = train(cfg, None, log=lambda _: None)["model"].state_dict()
    want = _reference_train(cfg)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _recipe(path, stages, trainer="mue-tiny"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trainer": trainer, "stages": stages}))
    return path


def test_a_second_stage_continues_from_the_first(shapes_root, tmp_path):
    first = TrainConfig(data_root=str(shapes_root), steps=3, **SMALL)
    second = TrainConfig(data_root=str(shapes_root), steps=2, loss_weighting="sample", entailment_fraction=0.75,
                         **SMALL)
    a = train_stages([first, second], tmp_path / "a", log=lambda _: None)
    stage1 = train_stages([first], tmp_path / "s1", log=lambda _: None)
    b = train_stages([second], tmp_path / "b", log=lambda _: None, init=tmp_path / "s1")
    assert stage1["steps"] == 3
    for (name, pa), pb in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(pa, pb), name  # retraining stage 1 and loading it give the same stage 2
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_a_recipe_trains_up_to_a_stage_and_init_starts_that_stage_from_a_checkpoint(shapes_root, tmp_path):
    from typer.testing import CliRunner

    from mue_bench.cli import app

    stages = [{"data_root": str(shapes_root), "steps": 2, **SMALL},
              {"data_root": str(shapes_root), "steps": 2, "lr": 1e-3, **SMALL},
              {"data_root": str(shapes_root), "steps": 1, "loss": "final", **SMALL}]
    recipe = _recipe(tmp_path / "r.json", stages)
    run_recipe(recipe, tmp_path / "s2", stage=2, log=lambda _: None)
    whole = run_recipe(recipe, tmp_path / "all", log=lambda _: None)
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--stage", "3", "--init",
                                      str(tmp_path / "s2"), "--out", str(tmp_path / "s3")])
    assert result.exit_code == 0, result.output
    assert whole["steps"] == 1
    assert ((tmp_path / "all" / "model.safetensors").read_bytes()
            == (tmp_path / "s3" / "model.safetensors").read_bytes())
    assert TrainConfig.model_validate_json((tmp_path / "s3" / "train_config.json").read_text()) == TrainConfig(
        **stages[2])


def test_init_for_the_first_stage_and_a_stage_past_the_last_are_refused(tmp_path):
    recipe = _recipe(tmp_path / "r.json", [{"steps": 1}])
    with pytest.raises(SpecError, match="stage 1 has none"):
        run_recipe(recipe, None, init=tmp_path, log=lambda _: None)
    with pytest.raises(SpecError, match="no stage 2"):
        run_recipe(recipe, None, stage=2, log=lambda _: None)


def test_paths_in_a_recipe_are_relative_to_its_file(tmp_path, monkeypatch):
    base = _recipe(tmp_path / "recipes" / "base.json", [{"data_root": "../data/here", "steps": 1}, {"steps": 2}])
    control = tmp_path / "recipes" / "controls" / "c.json"
    control.parent.mkdir()
    control.write_text(json.dumps({"base": "../base.json", "override": {"loss": "final"}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for path in (base, control):
        _, stages = expand_recipe(path)
        assert (elsewhere / stages[0].data_root).resolve() == (tmp_path / "data" / "here").resolve()
        assert stages[1].data_root == "data/shapes-v4"  # none named: the default, as with a bare TrainConfig
    _, stages = expand_recipe(control)
    assert [s.loss for s in stages] == ["final", "final"] and [s.steps for s in stages] == [1, 2]


def test_a_cycle_of_recipes_is_refused_in_one_line_before_any_training(tmp_path):
    from typer.testing import CliRunner

    from mue_bench.cli import app

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"base": "b.json"}))
    b.write_text(json.dumps({"base": "a.json", "override": {"steps": 1}}))
    result = CliRunner().invoke(app, ["train", "--config", str(a), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cycle" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_base_or_a_bad_stage_is_one_line_naming_the_file(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"base": "gone.json", "override": {"loss": "final"}}))
    with pytest.raises(SpecError, match=r"a\.json: base: recipe not found: .*gone\.json$"):
        expand_recipe(a)
    bad = _recipe(tmp_path / "bad.json", [{"steps": 1}, {"lr": "fast"}])
    with pytest.raises(SpecError, match=r"bad\.json \(stage 2\): lr: Input should be a valid number"):
        expand_recipe(bad)
    with pytest.raises(SpecError, match=r"c\.json: spec: .*trainer and stages"):
        expand_recipe(_recipe(tmp_path / "c.json", [{"steps": 1}], trainer=None))


def test_embedding_std_sets_the_position_and_modality_embeddings_and_nothing_else(shapes_root):
    small = dict(data_root=str(shapes_root), steps=1, lr=1e-9, batch_size=4, d_model=32, n_heads=2, d_ff=64)
    default = train(TrainConfig(**small), None, log=lambda _: None)["model"]
    scaled = train(TrainConfig(embedding_std=0.02, **small), None, log=lambda _: None)["model"]
    for name in ("text_pos", "dec_pos", "modality"):
        assert 0.5 < getattr(default, name).weight.std() < 2  # PyTorch's N(0, 1)
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


def test_a_stage_chooses_the_architecture_by_the_models_own_fields_types_and_defaults():
    import dataclasses

    from mue_bench.models.tiny.model import ARCHITECTURE, TinyConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TinyConfig)}
    assert TrainConfig().architecture() == {name: defaults[name] for name in ARCHITECTURE}
    chosen = TrainConfig(d_model=32, n_heads=2, encoder_attention="joint", stem_channels=8, image_positions="sincos")
    assert TinyConfig(vocab_size=10, **chosen.architecture()) == TinyConfig(
        vocab_size=10, d_model=32, n_heads=2, encoder_attention="joint", stem_channels=8, image_positions="sincos")
    for bad in ({"encoder_attention": "cross"}, {"stem_channels": -1}, {"image_positions": "grid"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
