"""``uiaa convert``: tables between formats, checkpoints to TorchScript/ONNX/int8."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    Debug,
    Quiet,
    TableFormat,
)
from uiaa_cli.errors import UiaaError

EPILOG = """Examples:

  uiaa convert labels.csv labels.parquet       # and back: uiaa convert labels.parquet labels.csv

  uiaa convert labels.csv - --to tsv | cut -f1,3

  uiaa convert part-1.csv part-2.csv part-3.csv preds.parquet   # join the parts (same columns)

  uiaa convert runs/latest/best.pt model.onnx  # needs uiaa[onnx]

  uiaa convert runs/latest/best.pt model.ts    # TorchScript

  uiaa convert runs/latest/best.pt model-int8.onnx --int8 --calibrate train.h5   # int8, for CPUs

Tables convert losslessly; CSV and TSV carry no attributes (kind, parameters, model): those travel
in Parquet and HDF5. Several inputs are concatenated in order into the one output.

An exported model takes pixels (N, 3, S, S): RGB values 0..255 (uint8; TorchScript also float), the
whole image warp-resized to the checkpoint's size S (no crop, bilinear), EXIF orientation applied,
channels first. It normalises inside and returns score (N,) and probs (N, K), exactly as predict.
With --int8 the network is quantized to int8 (the same inputs and outputs, about twice as fast on a
CPU with AVX2/VNNI), calibrated on a few hundred images of DATA; the agreement with the fp32 model
on held-back images is printed.
"""
def convert(
    paths: Annotated[list[str], typer.Argument(metavar="IN... OUT", help="One or more uiaa tables (csv, tsv, "
                                                "parquet, h5; - for stdin) or one checkpoint (.pt), then the "
                                                "output: .csv, .tsv, .parquet, .h5 or - for stdout; for a "
                                                "checkpoint .onnx or .ts.")],
    to: Annotated[Optional[TableFormat], typer.Option(help="Output format (default: by extension).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Quantize the model to int8 (OUT.onnx; IN a checkpoint or "
                                                      "an fp32 .onnx export); needs --calibrate.")] = False,
    calibrate: Annotated[Optional[str], typer.Option(metavar="DATA", help="Images to calibrate --int8 on: a "
                                                     "folder, a cache, or a labels table (with --images).")] = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of a --calibrate labels table's images (default: "
                                                       "the table's folder).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Convert tables between CSV, TSV, Parquet and HDF5 losslessly, joining several into one; export a
    checkpoint to TorchScript/ONNX."""
    with handled("convert", quiet, debug):
        from uiaa_cli.tables.outputs import check_output
        from uiaa_cli.tables.writers import concat_tables

        if len(paths) < 2:
            raise UiaaError("give an input and an output: uiaa convert IN... OUT")
        *sources, target = paths
        if sources.count("-") > 1:
            raise UiaaError("only one input can come from stdin")
        check_output(target, inputs=sources)
        if int8 or calibrate:
            if len(sources) > 1:
                raise UiaaError("quantize one model at a time")
            int8_convert(sources[0], target, calibrate, images)
            return
        if any(Path(s).suffix.lower() in (".pt", ".pth", ".ckpt") for s in sources):
            if len(sources) > 1:
                raise UiaaError("convert one checkpoint at a time")
            from uiaa_cli.models.export import export_model  # imports torch: only for checkpoints

            config = export_model(sources[0], target)
            size = config["size"]
            say(f"uiaa convert: {sources[0]} -> {target}: input pixels (N, 3, {size}, {size}) RGB 0..255, "
                f"outputs score (N,) and probs (N, {len(config['targets'])})")
            return
        rows, columns = concat_tables(sources, target, to.value if to else None)
        say(f"uiaa convert: {rows:,} rows, {columns} columns -> {target}"
            + (f" (from {len(sources)} tables)" if len(sources) > 1 else ""))


def int8_convert(source: str, target: str, calibrate: str | None, images: str | None) -> None:
    from uiaa_cli.models.quantize import convert_int8, slow_int8_reason

    if calibrate is None:
        raise UiaaError("--int8 needs --calibrate DATA: a folder of images, a cache, or a labels table with "
                        "--images")
    reason = slow_int8_reason()
    if reason:
        say(f"uiaa convert: warning: {reason} (written anyway, for a machine that has them)")
    config, agreement = convert_int8(source, target, calibrate, images)
    say(f"uiaa convert: {source} -> {target} (int8): input pixels (N, 3, {config['size']}, {config['size']}) RGB "
        f"0..255, outputs score (N,) and probs (N, {len(config['targets'])})")
    say(f"uiaa convert: {agreement}")
