"""`mue-bench convert`: an OFA checkpoint (fairseq .pt or HF/ModelScope folder) to a safetensors folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mue_bench.cli import render
from mue_bench.cli.options import handled


def convert(
    src: Annotated[Path, typer.Argument(help="fairseq .pt, or a folder with config.json + pytorch_model.bin.")],
    dst: Annotated[Path, typer.Argument(help="Output folder, written atomically.")],
    ema: Annotated[bool, typer.Option(help="Take the EMA weights of a fairseq .pt (extra_state.ema).")] = False,
    tokenizer: Annotated[Path | None, typer.Option(help="vocab.json + merges.txt folder, or OFA's utils/BPE.")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Convert an OFA checkpoint to safetensors, never running code from its pickle."""
    from mue_bench.models.ofa.checkpoint import convert_checkpoint

    with handled():
        out = convert_checkpoint(src, dst, ema=ema, tokenizer=tokenizer, force=force)
    render.line(f"wrote {out}")
