"""MuE fine-tuning of a transformers model: a few steps on a tiny random Florence-2, saved and reloaded."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from mue_bench.cli import app
from mue_bench.models.florence2 import Florence2Adapter
from mue_bench.mue.config import ExitConfig
from mue_bench.mue.engine import run_batch


def _config(tmp_path, shapes_root, steps: int, loss: str = "layerwise"):
    rows = json.loads((shapes_root / "dataset_coco.json").read_text())["images"][:6]
    data = tmp_path / "captions.jsonl"
    data.write_text("".join(json.dumps({"image": f"{r['filepath']}/{r['filename']}",
                                        "references": [s["raw"] for s in r["sentences"]]}) + "\n" for r in rows))
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps({
        "model": {"family": "florence2", "checkpoint": "random:tiny"},
        "data": {"dataset": "jsonl", "task": "caption", "annotations": str(data), "images": str(shapes_root)},
        "steps": steps, "batch_size": 3, "grad_accum": 2, "lr": 3e-3, "warmup": 1, "loss": loss,
        "device": "cpu", "log_every": 1,
    }))
    return path


def test_layerwise_finetuning_lowers_every_layers_loss_and_reloads(tmp_path, shapes_root):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["train", "--config", str(_config(tmp_path, shapes_root, 12)),
                                      "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "mue_finetune_summary.json").read_text())
    first, last = summary["loss_per_layer_first"], summary["loss_per_layer_last"]
    assert len(first) == 4 and all(b < a for a, b in zip(first, last))
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    adapter = Florence2Adapter.load(out)
    [sample] = run_batch(adapter, adapter.prepare(_samples(shapes_root)), ExitConfig(encoder_mode="freeze"),
                         adapter.decoding(max_len=4)).samples
    assert sample.tokens


def _samples(shapes_root):
    from mue_bench.data.loaders import load_karpathy

    return load_karpathy(shapes_root / "dataset_coco.json", shapes_root, "test")[:1]


def test_final_loss_trains_only_the_last_layer_output(tmp_path, shapes_root):
    from mue_bench.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig.from_file(_config(tmp_path, shapes_root, 2, loss="final"))
    summary = finetune(cfg, None, log=lambda line: None)
    assert len(summary["loss_per_layer_first"]) == 1
    assert torch.isfinite(torch.tensor(summary["loss_per_layer_last"])).all()


def test_bad_finetune_config_is_one_line(tmp_path, shapes_root):
    path = _config(tmp_path, shapes_root, 2)
    raw = json.loads(path.read_text())
    raw["grad_accum"] = 0
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "grad_accum" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
