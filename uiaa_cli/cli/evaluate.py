"""``uiaa evaluate``: predictions against the votes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    FINITE,
    Debug,
    Quiet,
)
from uiaa_cli.errors import UiaaError

EPILOG = """Examples:

  uiaa evaluate preds.csv test.csv

  uiaa evaluate preds.csv test.csv --json | jq .metrics.srcc

  uiaa predict photos/ -o preds.csv && uiaa evaluate preds.csv labels.csv --plot scatter.png
"""
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
        from uiaa_cli.tables.table import read_table
        from uiaa_cli.targets.labels import check_label_values

        if as_json and as_csv:
            raise UiaaError("choose one of --json and --csv")
        if predictions == "-" and labels_file == "-":
            raise UiaaError("only one of the two tables can come from stdin")
        if plot is not None:
            from uiaa_cli.plot import plot_format
            from uiaa_cli.tables.outputs import check_output

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
