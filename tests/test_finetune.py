"""MuE fine-tuning of transformers models: a few steps on tiny random Florence-2 and T5Gemma 2, saved and reloaded."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.models.hf.florence2 import Florence2Adapter
from mue_bench.models.hf.t5gemma2 import T5Gemma2Adapter
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch
from mue_bench.spec import Checkpoint


def _config(tmp_path, shapes_root, steps: int, loss: str = "layerwise", family: str = "florence2"):
    rows = json.loads((shapes_root / "dataset_coco.json").read_text())["images"][:6]
    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": f"{r['filepath']}/{r['filename']}",
                                        "references": [s["raw"] for s in r["sentences"]]}) + "\n" for r in rows))
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps({"trainer": "transformers", "stages": [{
        "model": {"family": family, "checkpoint": "random:tiny"},
        "data": {"dataset": "jsonl", "task": "caption", "annotations": str(data), "images": str(shapes_root)},
        "steps": steps, "batch_size": 3, "grad_accum": 2, "lr": 3e-3, "warmup": 1, "loss": loss,
        "device": "cpu", "log_every": 1,
    }]}))
    return path


@pytest.mark.parametrize(("family", "adapter_class"), [("florence2", Florence2Adapter), ("t5gemma2", T5Gemma2Adapter)])
def test_layerwise_finetuning_lowers_every_layers_loss_and_reloads(tmp_path, shapes_root, family, adapter_class):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["train", "--config", str(_config(tmp_path, shapes_root, 12, family=family)),
                                      "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "mue_finetune_summary.json").read_text())
    first, last = summary["loss_per_layer_first"], summary["loss_per_layer_last"]
    assert len(first) == 4 and all(b < a for a, b in zip(first, last))
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    adapter = adapter_class.load(Checkpoint("folder", str(out)))
    [sample] = run_batch(adapter, adapter.prepare(_samples(shapes_root)), ExitConfig(encoder_mode="freeze"),
                         adapter.decoding(max_len=4)).samples
    assert sample.tokens


def _samples(shapes_root):
    from mue_bench.data.loaders import load_karpathy

    return load_karpathy(shapes_root / "dataset_coco.json", shapes_root, "test")[:1]


def test_final_loss_trains_only_the_last_layer_output(tmp_path, shapes_root):
    from mue_bench.training import run_recipe

    summary = run_recipe(_config(tmp_path, shapes_root, 2, loss="final"), None, log=lambda line: None)
    assert len(summary["loss_per_layer_first"]) == 1
    assert torch.isfinite(torch.tensor(summary["loss_per_layer_last"])).all()


def test_bad_finetune_config_is_one_line(tmp_path, shapes_root):
    path = _config(tmp_path, shapes_root, 2)
    raw = json.loads(path.read_text())
    raw["stages"][0]["grad_accum"] = 0
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", "--recipe", str(path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "(stage 1): grad_accum:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", ["florence2", "t5gemma2"])
def test_the_shared_loss_is_the_mean_token_nll_of_each_layers_log_probs(family, shapes_root):
    """With token weighting the one layer-wise loss is, for a transformers model, the mean over target tokens
    of each layer's negative log-likelihood under its log-probs."""
    import torch.nn.functional as F

    from mue_bench.training.loop import layer_losses

    adapter, batch, labels, states = _teacher_forced(family, shapes_root)
    with torch.no_grad():
        got = layer_losses(adapter.logprobs, states, labels, adapter.pad_id, "layerwise")
    want = torch.stack([F.nll_loss(adapter.logprobs(h).transpose(1, 2), labels, ignore_index=adapter.pad_id)
                        for h in states])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", ["florence2", "t5gemma2"])
def test_the_last_layer_state_through_the_exit_head_is_the_models_own_prediction(family, shapes_root):
    """The layer-wise loss reads each decoder layer's output and applies the exit head (norm, head, softcap);
    for the last layer that must be exactly the model's own teacher-forced distribution."""
    adapter, batch, labels, states = _teacher_forced(family, shapes_root)
    with torch.no_grad():
        dec_in = adapter.decoder_inputs(labels)
        logits = adapter.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               pixel_values=batch.pixel_values, decoder_input_ids=dec_in, use_cache=False).logits
    assert len(states) == adapter.n_dec_layers
    torch.testing.assert_close(adapter.logprobs(states[-1]), logits.float().log_softmax(-1), rtol=1e-4, atol=1e-4)


def _teacher_forced(family: str, shapes_root):
    """A tiny random model of the family, a padded batch of two samples, their labels and every decoder layer's
    teacher-forced states."""
    from mue_bench.models.hf import florence2, t5gemma2

    make = florence2.random_florence2 if family == "florence2" else t5gemma2.random_t5gemma2
    adapter = make("tiny", seed=1)
    batch = adapter.prepare(_samples(shapes_root) * 2)
    labels = adapter.target_ids(["a red circle", "two blue squares left of a circle"], 8)
    with torch.no_grad():
        states = adapter.decoder_states(batch, labels)
    return adapter, batch, labels, states
