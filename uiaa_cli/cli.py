"""The ``uiaa`` command: one thin function per subcommand (parse, call, report).

Tables go to stdout, people's messages to stderr. Heavy modules (torch, h5py, pyarrow) are imported
inside the commands that need them, so ``labels``, ``evaluate`` and ``convert`` start fast and run
where torch is absent.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

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

    Each subcommand reads and writes plain tables (CSV, TSV, Parquet, HDF5) and composes in pipes:

      uiaa labels AVA.txt --kind gauss-mv --lam 0.5 > labels.csv
      uiaa cache labels.csv --images ava/images -o ava.h5
      uiaa train ava.h5 --loss ce
      uiaa predict photos/ | sort -k2
    """


# ----------------------------------------------------------------------------- option values
# Every numeric option is checked here, as the command line is parsed, before any work: a bad
# value is one line ``uiaa CMD: error: invalid value for '--opt': ...`` and exit status 2.


def checked(test: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    """A typer callback refusing values (other than an absent default) for which ``test`` is false."""
    def check(value: Any) -> Any:
        if value is not None and not test(value):
            raise typer.BadParameter(f"{what}, got {value!r}")
        return value

    return check


def _finite(x: float) -> bool:
    return math.isfinite(x)


FINITE = checked(_finite, "must be a finite number")
POSITIVE = checked(lambda x: _finite(x) and x > 0, "must be a positive finite number")
NON_NEGATIVE = checked(lambda x: _finite(x) and x >= 0, "must be a finite number >= 0")
UNIT = checked(lambda x: _finite(x) and 0 <= x <= 1, "must lie in [0, 1]")
SHARE = checked(lambda x: _finite(x) and 0 <= x < 1, "must lie in [0, 1)")
AT_LEAST_0 = checked(lambda n: n >= 0, "must be 0 or more")
AT_LEAST_1 = checked(lambda n: n >= 1, "must be 1 or more")
AT_LEAST_2 = checked(lambda n: n >= 2, "must be 2 or more (batch normalisation needs two images)")
PIXELS = checked(lambda n: 8 <= n <= 4096, "must lie in 8..4096 pixels")


def learning_rates(text: Optional[str]) -> Optional[str]:
    """``--lr START,END``: two positive finite numbers (or one, for a constant rate)."""
    if text is not None:
        parts = text.split(",")
        try:
            ok = len(parts) in (1, 2) and all(math.isfinite(float(p)) and float(p) > 0 for p in parts)
        except ValueError:
            ok = False
        if not ok:
            raise typer.BadParameter(f"expected START,END, two positive numbers (e.g. 1e-3,1e-4), got {text!r}")
    return text


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
    parquet = "parquet"
    h5 = "h5"


TableOutput = Annotated[str, typer.Option("--output", "-o", help="Output file (.csv, .tsv, .parquet, .h5); - for "
                                                              "stdout.")]
TableTo = Annotated[Optional[TableFormat], typer.Option(help="Output format (default: by extension; csv on "
                                                             "stdout).")]


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
    lam: Annotated[float, typer.Option(help="gauss-mv: var_z = min((1 - lam) var, cap).", callback=UNIT)] = 0.5,
    cap: Annotated[float, typer.Option(help="gauss-mv: the largest variance allowed.", callback=POSITIVE)] = 1.5,
    delta: Annotated[float, typer.Option(help="binary: leave out images with |mean - threshold| < delta.",
                                         callback=NON_NEGATIVE)] = 0.0,
    threshold: Annotated[Optional[float], typer.Option(help="binary: the threshold (default: b_ceil(M/2), "
                                                             "5 on 1..10, 3 on 1..5).", callback=FINITE)] = None,
    divisor: Annotated[Divisor, typer.Option(help="Gaussian kinds: 2var is exp(-d^2/(2 var)); var is the "
                                                  "authors' released code, exp(-d^2/var).")] = Divisor.two_var,
    min_votes: Annotated[float, typer.Option(help="Leave out images with fewer votes.", callback=NON_NEGATIVE)] = 0,
    only: Annotated[Optional[str], typer.Option(help="Keep only the images listed in this file: ids one per "
                                                     "line, or a table's image (or dedupe's image_a,image_b) "
                                                     "columns; with or without .jpg.")] = None,
    exclude: Annotated[Optional[str], typer.Option(help="Leave out the images listed in this file (as "
                                                        "--only).")] = None,
    source_format: Annotated[Optional[SourceFormat], typer.Option("--format", help="The ratings' format "
                                                                   "(default: detected).")] = None,
    scale: Annotated[Optional[str], typer.Option(help="The rating scale, e.g. 1..10 or 1,2,3,4,5 "
                                                      "(default: inferred).")] = None,
    output: TableOutput = "-",
    to: TableTo = None,
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
            for option, ids, why in (("--only", only_ids, "not in --only"), ("--exclude", exclude_ids, "in --exclude")):
                matched = report.rows_in - report.left_out.get(why, 0) if option == "--only" else \
                    report.left_out.get(why, 0)
                if ids is not None and not matched:
                    effect = "keep nothing" if option == "--only" else "leave nothing out"
                    raise UiaaError(f"none of its {len(ids):,} ids (such as {str(ids[0])!r}) names an image of "
                                    f"{ratings} (such as {str(source.images[0])!r}): {option} would {effect}",
                                    where=only if option == "--only" else exclude)
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
    predictions: Annotated[str, typer.Argument(help="Predictions: image, score[, std][, p_*] (csv/tsv/parquet/"
                                                    "h5, - for stdin).")],
    labels_file: Annotated[str, typer.Argument(metavar="LABELS", help="A labels table made by 'uiaa labels' "
                                                                       "(or a cache).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the metrics as one CSV row.")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Accuracy threshold (default: the labels').",
                                                       callback=FINITE)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a scatter of predicted against true score "
                                                      "(.png, .jpg, .webp, ...).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Score predictions against the votes: accuracy, SRCC, PCC, MSE, MAE, KL, EMD, std SRCC/PCC."""
    with handled("evaluate", quiet, debug):
        from uiaa_cli import evaluation
        from uiaa_cli.labels import check_label_values
        from uiaa_cli.tables import read_table

        if as_json and as_csv:
            raise UiaaError("choose one of --json and --csv")
        if predictions == "-" and labels_file == "-":
            raise UiaaError("only one of the two tables can come from stdin")
        if plot is not None:
            from uiaa_cli.outputs import check_output
            from uiaa_cli.plot import plot_format

            check_output(str(plot), inputs=[predictions, labels_file], what="plot", stdout=False)
            plot_format(plot)
        preds, labs = read_table(predictions), read_table(labels_file)
        check_label_values(labs, labels_file)
        result = evaluation.evaluate_tables(preds, labs, threshold, pred_name=predictions, label_name=labels_file)
        text = (evaluation.as_json if as_json else evaluation.as_csv if as_csv else evaluation.as_text)(result)
        sys.stdout.write(text)
        sys.stdout.flush()
        for what, names in (("predictions", result.predictions_unmatched), ("labels", result.labels_unmatched)):
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                say(f"uiaa evaluate: {len(names):,} {what} rows had no match ({shown})")
        say(f"uiaa evaluate: {result.joined:,} images joined")
        for note in result.notes:  # the reasons for n/a are in the table itself
            say(f"uiaa evaluate: {note}")
        if plot is not None:
            from uiaa_cli.plot import scatter_png

            scatter_png(result, preds, labs, plot)
            say(f"uiaa evaluate: wrote {plot}")


# ----------------------------------------------------------------------------------- convert


@app.command(epilog="""Examples:

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
""")
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
        from uiaa_cli.outputs import check_output
        from uiaa_cli.tables import concat_tables

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
            from uiaa_cli.export import export_model  # imports torch: only for checkpoints

            config = export_model(sources[0], target)
            size = config["size"]
            say(f"uiaa convert: {sources[0]} -> {target}: input pixels (N, 3, {size}, {size}) RGB 0..255, "
                f"outputs score (N,) and probs (N, {len(config['targets'])})")
            return
        rows, columns = concat_tables(sources, target, to.value if to else None)
        say(f"uiaa convert: {rows:,} rows, {columns} columns -> {target}"
            + (f" (from {len(sources)} tables)" if len(sources) > 1 else ""))


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

  uiaa cache labels.csv -o exact.h5 --store raw   # exact pixels, 5x disk

  uiaa cache --info ava.h5 --project 255502   # its size, and for N images

  uiaa convert ava.h5 kept.csv      # labels of the images cached

Stores: jpeg (the default; quality 95, no chroma subsampling) keeps each resized image as a JPEG
file: about a fifth of raw (17-22 % on our test photos) at a PSNR of 41-43 dB, decoded in train's
loader processes without slowing it, so the full AVA at 384 px takes 20-25 GB instead of 113 GB.
raw keeps the exact pixels (fastest to build); png keeps them losslessly at about 60 % of raw but
encodes slowly. Train, predict and dedupe read every store.

Exit status: 0 all images cached, 1 some images skipped (listed on stderr and in the cache's
'skipped' table), 2 usage or input error.
""")
def cache(
    labels_file: Annotated[str, typer.Argument(metavar="LABELS", help="A labels table made by 'uiaa labels' "
                                                                       "(csv/tsv/parquet/h5); with --info, a cache.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The cache to write (.h5).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder the image names are relative to "
                                                                    "(default: the labels file's folder).")] = None,
    size: Annotated[int, typer.Option(help="Side of the square the images are warped to (pixels).",
                                      callback=PIXELS)] = 384,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: all cores).",
                                                   callback=AT_LEAST_1)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted build (OUT.partial) "
                                                          "without redoing finished images; a finished OUT of "
                                                          "the same labels, images and size is kept.")] = False,
    store: Annotated[Optional[str], typer.Option(metavar="raw|jpeg[:QUALITY]|png",
                                                 help="How the pixels are kept (default jpeg:95; see below).")] = None,
    info: Annotated[bool, typer.Option("--info", help="Describe the cache LABELS (store, images, size, bytes per "
                                                      "image) on stdout instead of building one.")] = False,
    project: Annotated[Optional[int], typer.Option(metavar="N", help="With --info: the size of a cache of N "
                                                                      "images built the same way.")] = None,
    progress: Progress = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Decode and resize every image of a labels table once into one HDF5 file for training."""
    with handled("cache", quiet, debug):
        if info:
            from uiaa_cli.cache import cache_info

            if output is not None:
                raise UiaaError("--info describes an existing cache: give no --output")
            lines = cache_info(labels_file, project)
            width = max(len(what) for what, _ in lines)
            print("\n".join(f"{what:<{width}}  {value}" for what, value in lines), flush=True)
            return
        if project is not None:
            raise UiaaError("--project goes with --info")
        if output is None:
            raise UiaaError("missing --output (-o): the cache to write")
        from uiaa_cli.cache import build_cache
        from uiaa_cli.outputs import check_output, output_lock

        check_output(str(output), inputs=[labels_file], what="cache", stdout=False, regular=True)
        with output_lock(output):
            report = build_cache(labels_file, images, output, size=size, workers=workers, resume=resume,
                                 progress=False if quiet else progress, store=store)
        if report.complete_already:
            say(f"uiaa cache: {output} is already complete ({report.stored:,} of {report.total:,} images, the same "
                f"labels, images and size); nothing to do"
                + (f"; {len(report.skipped):,} were skipped" if report.skipped else ""))
            raise typer.Exit(1 if report.skipped else 0)
        rate = report.decoded / report.seconds if report.seconds > 0 else 0.0
        message = (f"uiaa cache: {report.stored:,} of {report.total:,} images -> {output} ({size} px, "
                   f"{report.store}); "
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


class Select(str, Enum):  # training.SELECT_RULES
    srcc = "srcc"
    smooth = "smooth"
    loss = "loss"
    last = "last"


@app.command(epilog="""Examples:

  uiaa train ava.h5 --device cuda:0            # from a cache (fast)

  uiaa train labels.csv --images photos/       # decoding on the fly

  uiaa train train.h5 --val test.h5 --lr 1e-3,1e-4 --out runs/mine

  uiaa train small.csv --arch resnet18 --weights none --size 64 --device cpu

  uiaa train ava.h5 --kind rsd                 # one cache, any kind: targets from its votes

  uiaa train --resume runs/mine                # after Ctrl-C

  torchrun --nproc_per_node=4 -m uiaa_cli train ava.h5    # DDP, 4 GPUs

Writes metrics.csv, last.pt (resumable) and best.pt (the epoch --select picks) in --out, and points
'latest' beside it (runs/latest by default) at the newest run; 'uiaa predict' finds runs/latest.
The summary shows both checkpoints. One run at a time writes a folder: a second run on the same
--out stops with an error.
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
    epochs: Annotated[int, typer.Option(help="Passes over the training images.", callback=AT_LEAST_1)] = 10,
    lr: Annotated[Optional[str], typer.Option(help="START,END: per-epoch exponential decay (one value: "
                                                   "constant). Default, END = START/10, from pretrained "
                                                   "weights (the paper's): ce/emd 1e-3 for distributions, "
                                                   "1e-2 for binary/soft; mse "
                                                   "10^-2.5; huber 10^-1.5. From scratch (--weights none, "
                                                   "measured on the example data): ce/emd 1e-2; mse, huber "
                                                   "1e-3. VGG 10x lower.", callback=learning_rates)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process under torchrun).",
                                            callback=AT_LEAST_2)] = 32,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", callback=NON_NEGATIVE)] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help="Default 1e-4 (ResNet), 5e-4 (VGG).",
                                                          callback=NON_NEGATIVE)] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels, warp-resized (default: the cache's, "
                                                     "else 384).", callback=PIXELS)] = None,
    weights: Annotated[str, typer.Option(help="imagenet (torchvision's; downloaded once), none (from "
                                              "scratch), or a weights/checkpoint file.")] = "imagenet",
    val: Annotated[Optional[str], typer.Option(help="Validation labels table or cache (default: hold out "
                                                    "--val-frac of DATA).")] = None,
    val_frac: Annotated[float, typer.Option(help="Share of DATA held out for validation when no --val "
                                                 "(0: none).", callback=SHARE)] = 0.1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Processes decoding images of a labels table (default: "
                                                        "cores, at most 8).", callback=AT_LEAST_0)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initial head, batches and flips.",
                                      callback=AT_LEAST_0)] = 0,
    out: Annotated[Optional[str], typer.Option(help="Run folder (default runs/<arch>-<kind>-<loss>-<time>).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this folder with its own settings "
                                                       "(only data paths, --device, --workers apply).")] = None,
    kind: Annotated[Optional[Kind], typer.Option(help="Derive the targets from DATA's vote columns, as 'uiaa "
                                                      "labels --kind' would (default: DATA's own targets). "
                                                      "Images binary --delta leaves out do not train; "
                                                      "validation still scores them.")] = None,
    lam: Annotated[float, typer.Option(help="With --kind gauss-mv: var_z = min((1 - lam) var, cap).",
                                       callback=UNIT)] = 0.5,
    cap: Annotated[float, typer.Option(help="With --kind gauss-mv: the largest variance allowed.",
                                       callback=POSITIVE)] = 1.5,
    divisor: Annotated[Divisor, typer.Option(help="With a Gaussian --kind: 2var or var (the authors' "
                                                  "code).")] = Divisor.two_var,
    threshold: Annotated[Optional[float], typer.Option(help="With --kind binary: the threshold (default "
                                                             "b_ceil(M/2)); also accuracy's.", callback=FINITE)] = None,
    delta: Annotated[float, typer.Option(help="With --kind binary: leave out images with |mean - threshold| "
                                              "< delta from training.", callback=NON_NEGATIVE)] = 0.0,
    select: Annotated[Select, typer.Option(help="Which epoch best.pt holds: last (default: measured best on "
                                                "held-out data, see README), loss (lowest validation loss), srcc "
                                                "(highest validation SRCC) or smooth (SRCC averaged over 3 "
                                                "epochs).")] = Select.last,
    progress: Progress = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fine-tune a ResNet/VGG on a labels table or a cache, with one loss for every kind of target."""
    with handled("train", quiet, debug):
        from uiaa_cli.formats import require_inputs

        require_inputs(data, val, resume, None if weights in ("imagenet", "none") else weights)
        from uiaa_cli.training import Interrupted, TrainSettings, parse_lr
        from uiaa_cli.training import train as run_training

        settings = TrainSettings(
            data=data, images=images, arch=arch, loss=loss.value, epochs=epochs, lr=parse_lr(lr) if lr else None,
            batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, size=size, weights=weights,
            val=val, val_frac=val_frac, device=device, workers=workers, seed=seed, out=out, resume=resume,
            progress=progress, quiet=quiet, select=select.value, kind=kind.value if kind else None, lam=lam,
            cap=cap, divisor=divisor.value, threshold=threshold, delta=delta)
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
    to: Annotated[Optional[TableFormat], typer.Option(help="Format of -o (default: by extension).")] = None,
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
    batch_size: Annotated[int, typer.Option(help="Images per batch.", callback=AT_LEAST_1)] = 32,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: min(4, cores); 0 "
                                                        "decodes in the main process).", callback=AT_LEAST_0)] = None,
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
            from uiaa_cli.tables import table_format

            check_output(output, inputs=[*inputs, *([model] if model else [])])
            table_format(output, to.value if to else None)  # an unknown extension is refused before the work
        interactive = sys.stderr.isatty() and not quiet
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
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------ dedupe


@app.command(epilog="""Examples:

  uiaa dedupe test.h5 train.h5 > dupes.csv      # test images that are also in train

  uiaa dedupe ava.h5 -o dupes.csv               # near-duplicates within one cache

  uiaa dedupe labels.csv --images ava/images    # a labels table: its images decoded

  uiaa labels AVA.txt --exclude dupes.csv -o train.csv   # then a clean split

Exit status: 0 done, 1 some images could not be read (listed on stderr, the rest compared), 2 usage
or input error.
""")
def dedupe(
    a: Annotated[str, typer.Argument(metavar="A", help="A cache, or a labels table (with --images).")],
    b: Annotated[Optional[str], typer.Argument(metavar="[B]", help="A second cache or labels table: pairs "
                                                                    "between A and B (default: within A).")] = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of a labels table's images (default: the "
                                                       "table's folder).")] = None,
    images_b: Annotated[Optional[str], typer.Option(help="Folder of B's images (default: --images).")] = None,
    max_distance: Annotated[int, typer.Option(help="Largest Hamming distance between the 63-bit hashes "
                                                   "of a pair.")] = 12,
    min_similarity: Annotated[float, typer.Option(help="Smallest correlation of the two images' 63 "
                                                       "low-frequency coefficients (cuts false pairs).")] = 0.9,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes and search threads (default: "
                                                        "all cores).")] = None,
    output: TableOutput = "-",
    to: TableTo = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Find near-duplicate images (re-encoded, resized, slightly cropped) within a data set or between two.

    One row per pair: image_a, image_b, distance (bits of 63), similarity; closest first.
    """
    with handled("dedupe", quiet, debug):
        from uiaa_cli.dedupe import dedupe as find_duplicates
        from uiaa_cli.tables import TableWriter

        with TableWriter(output, to.value if to else None) as writer:
            table, report = find_duplicates(a, b, images=images, images_b=images_b, max_distance=max_distance,
                                            min_similarity=min_similarity, workers=workers)
            writer.write(table)
        for name, reason in report.failed[:20]:
            say(f"uiaa dedupe: left out {name}: {reason}")
        if len(report.failed) > 20:
            say(f"uiaa dedupe: left out {len(report.failed) - 20:,} more images that could not be read")
        images_done = report.images_a + (report.images_b or 0)
        compared = (f"{report.images_a:,} images of {a} against {report.images_b:,} of {b}" if report.images_b
                    is not None else f"{report.images_a:,} images of {a} with each other")
        say(f"uiaa dedupe: {compared}: {report.pairs:,} near-duplicate pair{'s' if report.pairs != 1 else ''} "
            f"(distance <= {max_distance} bits, similarity >= {min_similarity:g}); hashing "
            f"{report.seconds_hashing:.1f} s ({images_done / max(report.seconds_hashing, 1e-9):,.0f} images/s), "
            f"search {report.seconds_search:.1f} s")
    if report.failed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: usage errors in one line, clean exits on a closed pipe and on Ctrl-C."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # 'uiaa' or 'uiaa CMD' alone: the help
        e.show()
        sys.exit(e.exit_code)
    except ClickException as e:  # a bad option value, a missing argument, an unknown command
        print(usage_error_line(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        quiet_closed_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        print("uiaa: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


def usage_error_line(e: Any) -> str:
    """``uiaa CMD: error: invalid value for '--lam': ...`` (one line, the usual uiaa shape)."""
    ctx = getattr(e, "ctx", None)
    command = f"uiaa {ctx.info_name}" if ctx is not None and ctx.parent is not None else "uiaa"
    message = " ".join(e.format_message().split())
    message = message[:1].lower() + message[1:].rstrip(".")
    hint = f" (see '{command} --help')" if ctx is not None else ""
    return f"{command}: error: {message}{hint}"
