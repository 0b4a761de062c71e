"""The ``uiaa`` command: one thin function per subcommand (parse, call, report).

Tables go to stdout, people's messages to stderr. Heavy modules (torch, h5py, pyarrow) are imported
inside the commands that need them, so ``labels``, ``evaluate`` and ``convert`` start fast and run
where torch is absent.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from uiaa_cli import __version__
from uiaa_cli.errors import UiaaError

app = typer.Typer(
    name="uiaa",
    help="Image aesthetic assessment: binary labels, scores and vote distributions from one model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


class State:
    debug = bool(os.environ.get("UIAA_DEBUG"))
    quiet = False


def say(message: str) -> None:
    """A line for people, on stderr (silent with --quiet)."""
    if not State.quiet:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def handled(command: str, quiet: bool = False, debug: bool = False) -> Iterator[None]:
    """Turn a UiaaError into ``uiaa CMD: error: ...`` on stderr and exit status 2 (unless --debug)."""
    State.quiet = quiet
    State.debug = State.debug or debug
    try:
        yield
    except UiaaError as e:
        if State.debug:
            raise
        fail(command, str(e), e.status)
    except BrokenPipeError:
        quiet_closed_stdout()
        raise typer.Exit(0) from None
    except OSError as e:  # a full disk or a dead device under stdout (files are named by the writer)
        from uiaa_cli.outputs import WRITE_ERRNOS

        if State.debug or e.errno not in WRITE_ERRNOS or e.filename is not None:
            raise
        fail(command, f"<stdout>: cannot write: {e.strerror}", 2)


def fail(command: str, message: str, status: int) -> None:
    """The one error line, after what stdout still holds (dropped if stdout cannot take it)."""
    try:
        sys.stdout.flush()
    except OSError:
        quiet_closed_stdout()
    print(f"uiaa {command}: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(status) from None


def quiet_closed_stdout() -> None:
    """The reader (``| head``) has gone: point stdout at /dev/null so Python's exit stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def version_callback(value: bool) -> None:
    if value:
        print(f"uiaa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True,
                                                     help="Print the version and exit.")] = None,
) -> None:
    """uiaa turns ratings into targets, caches images, trains, predicts, evaluates and converts.

    Each subcommand reads and writes plain tables (CSV, TSV, HDF5) and composes in pipes:

      uiaa labels AVA.txt --kind gauss-mv --lam 0.5 > labels.csv
      uiaa cache labels.csv --images ava/images -o ava.h5
      uiaa train ava.h5 --loss ce
      uiaa predict photos/ | sort -k2
    """


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr, only errors.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")]
Progress = Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr "
                                                  "(default: when stderr is a terminal).")]


class Kind(str, Enum):
    binary = "binary"
    soft = "soft"
    rsd = "rsd"
    gauss_nv = "gauss-nv"
    gauss_mv = "gauss-mv"


class SourceFormat(str, Enum):
    ava = "ava"
    counts = "counts"
    koniq = "koniq"
    long = "long"


class TableFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    h5 = "h5"


class PredictFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"
    h5 = "h5"


class EngineName(str, Enum):
    auto = "auto"
    onnx = "onnx"
    torch = "torch"


class Precision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"


class Divisor(str, Enum):
    two_var = "2var"
    var = "var"


# ------------------------------------------------------------------------------------ labels


@app.command(epilog="""Examples:

  uiaa labels AVA.txt > labels.csv                           # gauss-mv, lam 0.5, cap 1.5

  uiaa labels AVA.txt --only generic_test.jpgl -o test.csv     # the standard AVA split

  uiaa labels AVA.txt --exclude generic_test.jpgl -o train.csv

  uiaa labels koniq10k_distributions_sets.csv --kind rsd -o koniq.h5

  uiaa labels AVA.txt --kind binary --delta 1                 # drop 4 < mean <= 6

  uiaa labels AVA.txt --divisor var                          # the authors' released code
""")
def labels(
    ratings: Annotated[str, typer.Argument(help="AVA.txt, a counts table, a KonIQ-style table, a long table "
                                                 "of votes (image,score), or - for stdin.")],
    kind: Annotated[Kind, typer.Option(help="Target: binary, soft (p_high = mean / b_M), rsd (the votes), "
                                            "gauss-nv (Gaussian of the votes' variance), gauss-mv "
                                            "(modified variance).")] = Kind.gauss_mv,
    lam: Annotated[float, typer.Option(help="gauss-mv: var_z = min((1 - lam) var, cap).")] = 0.5,
    cap: Annotated[float, typer.Option(help="gauss-mv: the largest variance allowed.")] = 1.5,
    delta: Annotated[float, typer.Option(help="binary: leave out images with |mean - threshold| < delta.")] = 0.0,
    threshold: Annotated[Optional[float], typer.Option(help="binary: the threshold (default: b_ceil(M/2), "
                                                             "5 on 1..10, 3 on 1..5).")] = None,
    divisor: Annotated[Divisor, typer.Option(help="Gaussian kinds: 2var is exp(-d^2/(2 var)); var is the "
                                                  "authors' released code, exp(-d^2/var).")] = Divisor.two_var,
    min_votes: Annotated[float, typer.Option(help="Leave out images with fewer votes.")] = 0,
    only: Annotated[Optional[str], typer.Option(help="Keep only the image ids listed in this file.")] = None,
    exclude: Annotated[Optional[str], typer.Option(help="Leave out the image ids listed in this file.")] = None,
    source_format: Annotated[Optional[SourceFormat], typer.Option("--format", help="The ratings' format "
                                                                   "(default: detected).")] = None,
    scale: Annotated[Optional[str], typer.Option(help="The rating scale, e.g. 1..10 or 1,2,3,4,5 "
                                                      "(default: inferred).")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Output file (.csv, .tsv, .h5); - for stdout.")] = "-",
    to: Annotated[Optional[TableFormat], typer.Option(help="Output format (default: by extension; csv on "
                                                           "stdout).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Turn ratings into training targets: one self-describing row per image."""
    with handled("labels", quiet, debug):
        from uiaa_cli.labels import LabelReport, LabelSettings, build_labels, read_id_list
        from uiaa_cli.outputs import check_output
        from uiaa_cli.ratings import iter_ratings
        from uiaa_cli.tables import TableWriter

        check_output(output, inputs=[ratings, *(f for f in (only, exclude) if f)])

        try:
            settings = LabelSettings(kind.value, lam, cap, delta, threshold, divisor.value)
        except ValueError as e:
            raise UiaaError(str(e)) from None
        only_ids = read_id_list(only) if only else None
        exclude_ids = read_id_list(exclude) if exclude else None
        report = LabelReport()
        with TableWriter(output, to.value if to else None) as writer:
            for source in iter_ratings(ratings, source_format.value if source_format else None, scale,
                                       allow_zero_votes=min_votes >= 1):
                table, chunk_report = build_labels(source.images, source.counts, source.bins, settings,
                                                   min_votes=min_votes, only=only_ids, exclude=exclude_ids)
                writer.write(table)
                report.merge(chunk_report)
        left = ", ".join(f"{n:,} {why}" for why, n in report.left_out.items())
        message = (f"uiaa labels: {report.rows_in:,} rows in ({source.source_format}, scale "
                   f"{source.bins[0]:g}..{source.bins[-1]:g}), {report.rows_out:,} out, "
                   f"{report.rows_in - report.rows_out:,} left out{f' ({left})' if left else ''}; {kind.value}")
        if report.reconstruction_error is not None:
            message += f"; mean reconstruction error |sum b p - mean| = {report.reconstruction_error:.2e}"
        say(message)


# ---------------------------------------------------------------------------------- evaluate


@app.command(epilog="""Examples:

  uiaa evaluate preds.csv test.csv

  uiaa evaluate preds.csv test.csv --json | jq .metrics.srcc

  uiaa predict photos/ -o preds.csv && uiaa evaluate preds.csv labels.csv --plot scatter.png
""")
def evaluate(
    predictions: Annotated[str, typer.Argument(help="Predictions: image, score[, std][, p_*] (csv/tsv/h5, - for "
                                                    "stdin).")],
    labels_file: Annotated[str, typer.Argument(metavar="LABELS", help="A labels table made by 'uiaa labels' "
                                                                       "(or a cache).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the metrics as one CSV row.")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Accuracy threshold (default: the labels').")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a scatter of predicted against true score "
                                                      "(PNG).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Score predictions against the votes: accuracy, SRCC, PCC, MSE, MAE, KL, EMD, std SRCC/PCC."""
    with handled("evaluate", quiet, debug):
        from uiaa_cli import evaluation
        from uiaa_cli.tables import read_table

        if as_json and as_csv:
            raise UiaaError("choose one of --json and --csv")
        if predictions == "-" and labels_file == "-":
            raise UiaaError("only one of the two tables can come from stdin")
        if plot is not None:
            from uiaa_cli.outputs import check_output

            check_output(str(plot), inputs=[predictions, labels_file], what="plot", stdout=False)
        preds, labs = read_table(predictions), read_table(labels_file)
        result = evaluation.evaluate_tables(preds, labs, threshold)
        text = (evaluation.as_json if as_json else evaluation.as_csv if as_csv else evaluation.as_text)(result)
        sys.stdout.write(text)
        sys.stdout.flush()
        for what, names in (("predictions", result.predictions_unmatched), ("labels", result.labels_unmatched)):
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                say(f"uiaa evaluate: {len(names):,} {what} rows had no match ({shown})")
        say(f"uiaa evaluate: {result.joined:,} images joined")
        for note in result.notes:
            say(f"uiaa evaluate: {note}")
        if plot is not None:
            from uiaa_cli.plot import scatter_png

            scatter_png(result, preds, labs, plot)
            say(f"uiaa evaluate: wrote {plot}")


# ----------------------------------------------------------------------------------- convert


@app.command(epilog="""Examples:

  uiaa convert labels.csv labels.h5            # and back: uiaa convert labels.h5 labels.csv

  uiaa convert labels.csv - --to tsv | cut -f1,3

  uiaa convert runs/latest/best.pt model.onnx  # needs uiaa[onnx]

  uiaa convert runs/latest/best.pt model.ts    # TorchScript

  uiaa convert runs/latest/best.pt model-int8.onnx --int8 --calibrate train.h5   # int8, for CPUs

An exported model takes pixels (N, 3, S, S): RGB values 0..255 (uint8; TorchScript also float), the
whole image warp-resized to the checkpoint's size S (no crop, bilinear), EXIF orientation applied,
channels first. It normalises inside and returns score (N,) and probs (N, K), exactly as predict.
With --int8 the network is quantized to int8 (the same inputs and outputs, about twice as fast on a
CPU with AVX2/VNNI), calibrated on a few hundred images of DATA; the agreement with the fp32 model
on held-back images is printed.
""")
def convert(
    source: Annotated[str, typer.Argument(metavar="IN", help="A uiaa table (csv/tsv/h5, - for stdin) or a "
                                                             "checkpoint (.pt).")],
    target: Annotated[str, typer.Argument(metavar="OUT", help="The output: .csv, .tsv, .h5, or - for stdout; "
                                                              "for a checkpoint .onnx or .ts.")],
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
    """Convert tables between CSV, TSV and HDF5 losslessly; export a checkpoint to TorchScript/ONNX."""
    with handled("convert", quiet, debug):
        from uiaa_cli.outputs import check_output
        from uiaa_cli.tables import read_table, write_table

        check_output(target, inputs=[source])
        if int8 or calibrate:
            int8_convert(source, target, calibrate, images)
            return
        if Path(source).suffix.lower() in (".pt", ".pth", ".ckpt"):
            from uiaa_cli.export import export_model  # imports torch: only for checkpoints

            config = export_model(source, target)
            size = config["size"]
            say(f"uiaa convert: {source} -> {target}: input pixels (N, 3, {size}, {size}) RGB 0..255, "
                f"outputs score (N,) and probs (N, {len(config['targets'])})")
            return
        table = read_table(source)
        write_table(table, target, to.value if to else None)
        say(f"uiaa convert: {len(table):,} rows, {len(table.names)} columns -> {target}")


def int8_convert(source: str, target: str, calibrate: str | None, images: str | None) -> None:
    from uiaa_cli.quantize import convert_int8, slow_int8_reason

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


# ------------------------------------------------------------------------- cache, train, predict


def not_yet(command: str) -> None:
    raise UiaaError("not yet available in this version")


@app.command(epilog="""Examples:

  uiaa cache labels.csv --images ava/images -o ava.h5   # 384 px

  uiaa cache train.csv -o train.h5 --size 224 --workers 4

  uiaa cache labels.csv --images ava/images -o ava.h5 --resume

  uiaa convert ava.h5 kept.csv      # labels of the images cached

Exit status: 0 all images cached, 1 some images skipped (listed on stderr and in the cache's
'skipped' table), 2 usage or input error.
""")
def cache(
    labels_file: Annotated[str, typer.Argument(metavar="LABELS", help="A labels table made by 'uiaa labels' "
                                                                       "(csv/tsv/h5).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The cache to write (.h5).")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder the image names are relative to "
                                                                    "(default: the labels file's folder).")] = None,
    size: Annotated[int, typer.Option(help="Side of the square the images are warped to (pixels).")] = 384,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: all cores).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted build (OUT.partial) "
                                                          "without redoing finished images; a finished OUT of "
                                                          "the same labels, images and size is kept.")] = False,
    progress: Progress = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Decode and resize every image of a labels table once into one HDF5 file for training."""
    with handled("cache", quiet, debug):
        from uiaa_cli.cache import build_cache
        from uiaa_cli.outputs import check_output, output_lock

        check_output(str(output), inputs=[labels_file], what="cache", stdout=False)
        with output_lock(output):
            report = build_cache(labels_file, images, output, size=size, workers=workers, resume=resume,
                                 progress=False if quiet else progress)
        if report.complete_already:
            say(f"uiaa cache: {output} is already complete ({report.stored:,} of {report.total:,} images, the same "
                f"labels, images and size); nothing to do"
                + (f"; {len(report.skipped):,} were skipped" if report.skipped else ""))
            raise typer.Exit(1 if report.skipped else 0)
        rate = report.decoded / report.seconds if report.seconds > 0 else 0.0
        message = (f"uiaa cache: {report.stored:,} of {report.total:,} images -> {output} ({size} px); "
                   f"{report.decoded:,} processed in {report.seconds:.1f} s ({rate:,.0f} images/s, "
                   f"{report.workers} worker{'s' if report.workers > 1 else ''})")
        if report.carried:
            message += f"; {report.carried:,} carried over from the interrupted build"
        if report.skipped:
            message += (f"; {len(report.skipped):,} skipped (listed above and in the cache's "
                        "'skipped' table)")
        say(message)
        if report.skipped:
            raise typer.Exit(1)


class Loss(str, Enum):
    ce = "ce"
    mse = "mse"
    huber = "huber"
    emd = "emd"


@app.command(epilog="""Examples:

  uiaa train ava.h5 --device cuda:0            # from a cache (fast)

  uiaa train labels.csv --images photos/       # decoding on the fly

  uiaa train train.h5 --val test.h5 --lr 1e-3,1e-4 --out runs/mine

  uiaa train small.csv --arch resnet18 --weights none --size 64 --device cpu

  uiaa train --resume runs/mine                # after Ctrl-C

  torchrun --nproc_per_node=4 -m uiaa_cli train ava.h5    # DDP, 4 GPUs

Writes metrics.csv, last.pt (resumable) and best.pt (highest validation SRCC) in --out, and points
'latest' beside it (runs/latest by default) at the newest run; 'uiaa predict' finds runs/latest.
One run at a time writes a folder: a second run on the same --out stops with an error.
""")
def train(
    data: Annotated[Optional[str], typer.Argument(help="A labels table (images decoded on the fly from "
                                                       "--images) or a cache made by 'uiaa cache'. Optional "
                                                       "with --resume.")] = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of the images named in a labels table (default: "
                                                       "the table's folder).")] = None,
    arch: Annotated[str, typer.Option(help="resnet18/34/50/101/152, vgg16, vgg16_bn, efficientnet_b0, "
                                           "convnext_tiny, mobilenet_v3_large.")] = "resnet50",
    loss: Annotated[Loss, typer.Option(help="ce and emd train a softmax head, mse and huber a linear "
                                            "one.")] = Loss.ce,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 10,
    lr: Annotated[Optional[str], typer.Option(help="START,END: per-epoch exponential decay (default by kind and "
                                                   "loss: ce/emd 1e-3,1e-4 for distributions, 1e-2,1e-3 for "
                                                   "binary/soft; mse 10^-2.5..; huber 10^-1.5..; VGG 10x "
                                                   "lower).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process under torchrun).")] = 32,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help="Default 1e-4 (ResNet), 5e-4 (VGG).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels, warp-resized (default: the cache's, "
                                                     "else 384).")] = None,
    weights: Annotated[str, typer.Option(help="imagenet (torchvision's; downloaded once), none (from "
                                              "scratch), or a weights/checkpoint file.")] = "imagenet",
    val: Annotated[Optional[str], typer.Option(help="Validation labels table or cache (default: hold out "
                                                    "--val-frac of DATA).")] = None,
    val_frac: Annotated[float, typer.Option(help="Share of DATA held out for validation when no --val "
                                                 "(0: none).")] = 0.1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Processes decoding images of a labels table (default: "
                                                        "cores, at most 8).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initial head, batches and flips.")] = 0,
    out: Annotated[Optional[str], typer.Option(help="Run folder (default runs/<arch>-<kind>-<loss>-<time>).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this folder with its own settings "
                                                       "(only data paths, --device, --workers apply).")] = None,
    progress: Progress = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fine-tune a ResNet/VGG on a labels table or a cache, with one loss for every kind of target."""
    with handled("train", quiet, debug):
        from uiaa_cli.training import Interrupted, TrainSettings, parse_lr
        from uiaa_cli.training import train as run_training

        settings = TrainSettings(
            data=data, images=images, arch=arch, loss=loss.value, epochs=epochs, lr=parse_lr(lr) if lr else None,
            batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, size=size, weights=weights,
            val=val, val_frac=val_frac, device=device, workers=workers, seed=seed, out=out, resume=resume,
            progress=progress, quiet=quiet)
        try:
            folder = run_training(settings)
        except Interrupted as e:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
                print(f"uiaa train: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None
        if os.environ.get("RANK", "0") == "0":
            say(f"uiaa train: done; best model {folder / 'best.pt'}")


@app.command(epilog="""Examples:

  uiaa predict photos/ | sort -k2               # rank a folder, best last

  uiaa predict photos/ | sort -k2 -g | tail -5  # the five best

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
""")
def predict(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUTS", help="Image files, folders (recursive), - for a list of paths on stdin, WebDataset "
                                  "tar shards, a labels table or cache (its images), or a table with a column "
                                  "of paths (path, image, file, filepath; .csv, .tsv, .parquet, .h5).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A checkpoint (or a run folder). Default: "
                                                  "$UIAA_MODEL, else the newest under ./runs.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write a table (.csv, .tsv, .parquet, "
                                                   ".h5) with a header: image, [shard,] score, std, p_*. "
                                                   "Default: path<TAB>score lines on stdout.")] = None,
    to: Annotated[Optional[PredictFormat], typer.Option(help="Format of -o (default: by extension).")] = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of a table's images (default: the table's "
                                                       "folder).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    engine: Annotated[EngineName, typer.Option(help="auto: ONNX Runtime on CPU (the checkpoint exported once, "
                                                     "kept beside it), torch on CUDA/MPS.")] = EngineName.auto,
    precision: Annotated[Optional[Precision], typer.Option(help="int8: the checkpoint quantized for the CPU (once, "
                                                              "calibrated on the inputs or --calibrate; about 2x "
                                                              "faster). Default: the model's own.")] = None,
    calibrate: Annotated[Optional[str], typer.Option(metavar="DATA", help="Images to calibrate --precision int8 on "
                                                     "(folder, cache, labels table); quantizes anew.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: min(4, cores); 0 "
                                                        "decodes in the main process).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run of the same command "
                                                          "(-o FILE; its parts are in FILE.partial/).")] = False,
    shard: Annotated[Optional[str], typer.Option(help="K/N: score only job K's share of the inputs (those at "
                                                      "positions K modulo N; K counts from 0), so N jobs score "
                                                      "each input once.")] = None,
    progress: Annotated[bool, typer.Option("--progress", help="Show a progress bar even when stderr is not a "
                                                              "terminal.")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Score images with a trained model: one line per image, or a table with -o.

    A file that cannot be read is one line on stderr and the run goes on; the exit status is 1 if
    any input failed, 2 for usage errors, 0 otherwise.
    """
    with handled("predict", quiet, debug):
        from uiaa_cli.predict import run_predict

        if not inputs:
            raise UiaaError("no inputs: give image files, folders, - (paths on stdin), tar shards or a table")
        if output is not None:
            from uiaa_cli.outputs import check_output

            check_output(output, inputs=[*inputs, *([model] if model else [])])
        interactive = sys.stderr.isatty() and not quiet
        result = run_predict(inputs, model=model, output=output, fmt=to.value if to else None, images=images,
                             device=device, batch_size=batch_size, workers=workers,
                             progress=(interactive or progress) and not quiet, shard=shard, resume=resume,
                             engine=engine.value, precision=precision.value if precision else None,
                             calibrate=calibrate)
        if (interactive or progress) and os.environ.get("RANK", "0") == "0":
            carried = f" ({result.carried:,} more by the interrupted run)" if result.carried else ""
            say(f"uiaa predict: {result.scored:,} images scored{carried}, {result.failed:,} failed, "
                f"{result.scored / max(result.seconds, 1e-9):.1f} images/s" + (f" -> {output}" if output else ""))
    if result.failed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: clean exits on a closed pipe and on Ctrl-C."""
    try:
        app()
    except BrokenPipeError:
        quiet_closed_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        print("uiaa: interrupted", file=sys.stderr)
        sys.exit(130)
