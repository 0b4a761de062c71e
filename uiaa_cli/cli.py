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
        print(f"uiaa {command}: error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(e.status) from None


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
        from uiaa_cli.labels import LabelSettings, build_labels, read_id_list
        from uiaa_cli.ratings import read_ratings
        from uiaa_cli.tables import write_table

        try:
            settings = LabelSettings(kind.value, lam, cap, delta, threshold, divisor.value)
        except ValueError as e:
            raise UiaaError(str(e)) from None
        source = read_ratings(ratings, source_format.value if source_format else None, scale,
                              allow_zero_votes=min_votes >= 1)
        table, report = build_labels(
            source.images, source.counts, source.bins, settings, min_votes=min_votes,
            only=read_id_list(only) if only else None, exclude=read_id_list(exclude) if exclude else None,
        )
        write_table(table, output, to.value if to else None)
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

  uiaa convert runs/latest/best.pt model.onnx  # a checkpoint for deployment
""")
def convert(
    source: Annotated[str, typer.Argument(metavar="IN", help="A uiaa table (csv/tsv/h5, - for stdin) or a "
                                                             "checkpoint (.pt).")],
    target: Annotated[str, typer.Argument(metavar="OUT", help="The output: .csv, .tsv, .h5, or - for stdout; "
                                                              "for a checkpoint .onnx or .ts.")],
    to: Annotated[Optional[TableFormat], typer.Option(help="Output format (default: by extension).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Convert tables between CSV, TSV and HDF5 losslessly; export a checkpoint to TorchScript/ONNX."""
    with handled("convert", quiet, debug):
        from uiaa_cli.tables import read_table, write_table

        if Path(source).suffix.lower() in (".pt", ".pth", ".ckpt"):
            raise UiaaError("model export is not yet available in this version")
        table = read_table(source)
        write_table(table, target, to.value if to else None)
        say(f"uiaa convert: {len(table):,} rows, {len(table.names)} columns -> {target}")


# ------------------------------------------------------------------------- cache, train, predict


def not_yet(command: str) -> None:
    raise UiaaError("not yet available in this version")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cache(quiet: Quiet = False, debug: Debug = False) -> None:
    """Decode and resize every image of a labels table once into one HDF5 file (not yet available)."""
    with handled("cache", quiet, debug):
        not_yet("cache")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(quiet: Quiet = False, debug: Debug = False) -> None:
    """Fine-tune a ResNet/VGG on a labels table or cache with one loss (not yet available)."""
    with handled("train", quiet, debug):
        not_yet("train")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def predict(quiet: Quiet = False, debug: Debug = False) -> None:
    """Score images with a trained model (not yet available)."""
    with handled("predict", quiet, debug):
        not_yet("predict")


def main() -> None:
    """Entry point: clean exits on a closed pipe and on Ctrl-C."""
    try:
        app()
    except BrokenPipeError:
        # The reader (| head) has gone: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        print("uiaa: interrupted", file=sys.stderr)
        sys.exit(130)
