"""``uiaa predict``: score images with a trained model."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    BatchSize,
    Debug,
    DecodeWorkers,
    Device,
    Engine,
    EngineName,
    OutputFormat,
    Precision,
    Quiet,
)
from uiaa_cli.errors import ExitStatus, UiaaError

EPILOG = """Examples:

  uiaa predict photos/ | sort -t$'\\t' -k2 -g            # rank a folder, best last

  uiaa predict photos/ | sort -t$'\\t' -k2 -g | tail -5  # the five best

  find . -name '*.jpg' | uiaa predict - -m model.pt

  uiaa predict test.csv --images ava/images -o preds.csv

  uiaa evaluate preds.csv test.csv

  uiaa predict test.h5 -o preds.h5              # a cache: its stored pixels

  uiaa predict shards/*.tar -o scores.parquet   # WebDataset shards: rows keyed by __key__ and shard

  uiaa predict paths.parquet -o scores.parquet --resume   # continue after Ctrl-C or kill -9

  uiaa predict shards/*.tar --shard $SLURM_ARRAY_TASK_ID/8 -o part$SLURM_ARRAY_TASK_ID.parquet

  uiaa convert part*.parquet all.parquet        # join the 8 jobs' parts

  torchrun --nproc-per-node 4 -m uiaa_cli predict photos/ -o preds.csv

  uiaa predict photos/ -m best.pt --precision int8   # int8 on a CPU: quantized once, kept beside best.pt

  uiaa predict shards/ --ray auto -o scores.parquet   # on a Ray cluster
"""
def predict(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUTS", help="Image files, folders (recursive), - for a list of paths on stdin, WebDataset "
                                  "tar shards, a labels table or cache (its images), or a table with a column "
                                  "of paths (path, image, file, filepath; .csv, .tsv, .parquet, .h5).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A checkpoint, a run folder or an .onnx. "
                                                  "Default: $UIAA_MODEL, else the newest run under ./runs, else "
                                                  "one that ./latest or ./*/latest points at (demo/latest).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write a table (.csv, .tsv, .parquet, "
                                                   ".h5) with a header: image, [shard,] score, std, p_*. "
                                                   "Default: path<TAB>score lines on stdout.")] = None,
    to: OutputFormat = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of a table's images (default: the table's "
                                                       "folder).")] = None,
    device: Device = "auto",
    engine: Engine = EngineName.auto,
    precision: Annotated[Optional[Precision], typer.Option(help="int8: the checkpoint quantized for the CPU (once, "
                                                              "calibrated on the inputs or --calibrate; about 2x "
                                                              "faster). Default: the model's own.")] = None,
    calibrate: Annotated[Optional[str], typer.Option(metavar="DATA", help="Images to calibrate --precision int8 on "
                                                     "(folder, cache, labels table); quantizes anew.")] = None,
    batch_size: BatchSize = 32,
    workers: DecodeWorkers = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run of the same command "
                                                          "(-o FILE; its parts are in FILE.partial/).")] = False,
    shard: Annotated[Optional[str], typer.Option(help="K/N: score only job K's share of the inputs (those at "
                                                      "positions K modulo N; K counts from 0), so N jobs score "
                                                      "each input once.")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help="Score on Ray Data: 'local' (a "
                                               "cluster started for this run), 'auto' (this node's cluster) or "
                                               "an address; the inputs are shards, a table of paths or a folder "
                                               "(docs/python.md). Needs the ray extra.")] = None,
    progress: Annotated[bool, typer.Option("--progress", help="Show a progress bar even when stderr is not a "
                                                              "terminal.")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Score images with a trained model: one line per image, or a table with -o.

    The score is on the scale of the votes the model was trained on: 1..10 for models trained on AVA,
    1..5 on KonIQ. The model predicts how the votes spread over that scale (p_*), and the score is the
    mean of that distribution (sum of b p_b; b_M p_high for binary models), so it lies between the
    lowest and the highest score of the scale, and std is its spread. Scores of one model rank photos;
    they are not comparable across models.

    A file that cannot be read is one line on stderr and the run goes on; the exit status is 1 if
    any input failed, 2 for usage errors (and a model whose weights are NaN), 0 otherwise.
    """
    with handled("predict", quiet, debug):
        from uiaa_cli.predict.pipeline import run_predict

        if not inputs:
            raise UiaaError("no inputs: give image files, folders, - (paths on stdin), tar shards or a table")
        if output is not None:
            from uiaa_cli.tables.outputs import check_output
            from uiaa_cli.tables.table import table_format

            check_output(output, inputs=[*inputs, *([model] if model else [])])
            table_format(output, to.value if to else None)  # an unknown extension is refused before the work
        interactive = sys.stderr.isatty() and not quiet
        if ray is not None:
            from uiaa_cli.predict.on_ray import predict_on_ray

            for given, name in ((resume, "--resume"), (shard, "--shard"), (precision, "--precision"),
                                (calibrate, "--calibrate")):
                if given:
                    raise UiaaError(f"{name} does not go with --ray (Ray retries lost work itself)")
            result = predict_on_ray(inputs, model=model, output=output, fmt=to.value if to else None, address=ray,
                                    images=images, batch_size=batch_size, engine=engine.value, device=device)
        else:
            result = run_predict(inputs, model=model, output=output, fmt=to.value if to else None, images=images,
                                 device=device, batch_size=batch_size, workers=workers,
                                 progress=(interactive or progress) and not quiet, shard=shard, resume=resume,
                                 engine=engine.value, precision=precision.value if precision else None,
                                 calibrate=calibrate, note=lambda line: say(f"uiaa predict: {line}"))
        if (interactive or progress) and os.environ.get("RANK", "0") == "0":
            carried = f" ({result.carried:,} more by the interrupted run)" if result.carried else ""
            say(f"uiaa predict: {result.scored:,} images scored{carried}, {result.failed:,} failed, "
                f"{result.scored / max(result.seconds, 1e-9):.1f} images/s" + (f" -> {output}" if output else ""))
    if result.failed:
        raise typer.Exit(ExitStatus.INCOMPLETE)
