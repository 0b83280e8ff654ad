"""`mue-bench eval`: one threshold triple on the built-in benchmark, against the full model."""

from __future__ import annotations

from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import DeviceOpt, JsonOpt, LimitOpt, QuietOpt, handled, verbosity

Task = Annotated[str, typer.Option(help="caption or entailment.")]
TauImg = Annotated[float, typer.Option("--img", help="τ_img (above 1: no exit).")]
TauTxt = Annotated[float, typer.Option("--txt", help="τ_txt.")]
TauDec = Annotated[float, typer.Option("--dec", help="τ_dec.")]
Checkpoint = Annotated[str, typer.Option(help="Built-in name or checkpoint folder.")]
Split = Annotated[str, typer.Option(help="Dataset split.")]
KVFill = Annotated[str, typer.Option(help="copy, propagate or official.")]
EncoderMode = Annotated[str, typer.Option(help="freeze (joint encoder, mue-tiny's own) or split.")]
Schedule = Annotated[str, typer.Option("--dec-schedule", help="Decoder threshold schedule: constant or official.")]
Beams = Annotated[int, typer.Option("--num-beams", help="Beam size.")]
DataRoot = Annotated[str | None, typer.Option(help="Where the shapes benchmark lives [default: "
                                                   "data/shapes-v<version>].")]
DataVersion = Annotated[int | None, typer.Option(help="shapes generator version (2, 3 or 4) [default: the one "
                                                      "the shipped model was trained on].")]


def evaluate(
    task: Task = "caption", img: TauImg = 0.99, txt: TauTxt = 0.7, dec: TauDec = 0.9,
    checkpoint: Checkpoint = "mue-tiny", split: Split = "test", kv_fill: KVFill = "copy",
    encoder_mode: EncoderMode = "freeze", dec_schedule: Schedule = "constant", num_beams: Beams = 1,
    data_root: DataRoot = None, data_version: DataVersion = None, limit: LimitOpt = None, device: DeviceOpt = None,
    as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """One threshold triple on the shapes benchmark: quality and savings against the full model."""
    from mue_bench.run.evaluate import EvalRequest
    from mue_bench.run.evaluate import evaluate as run_eval

    request = EvalRequest(task, img, txt, dec, checkpoint, split, kv_fill, encoder_mode, dec_schedule, num_beams,
                          data_root, data_version, limit, device)
    with handled(), render.progress(verbosity(quiet, False)) as hooks:
        outcome = run_eval(request, hooks)
    if as_json:
        return render.eval_json(outcome.points)
    whole = ", every sample of the split: --limit N for fewer" if limit is None else ""
    render.eval_table(outcome.points, f"{checkpoint} on shapes {task} ({split}{whole})")
