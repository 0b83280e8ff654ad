"""Training: the layer-wise loss trains every layer; a few steps make the loss fall."""

import torch

from mue_bench.train import TrainConfig, layer_losses, train


def test_a_few_steps_make_the_loss_fall(shapes_root, tmp_path):
    cfg = TrainConfig(data_root=str(shapes_root), steps=30, batch_size=8, d_model=32, n_heads=2, d_ff=64,
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
