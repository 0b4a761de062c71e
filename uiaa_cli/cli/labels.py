"""``uiaa labels``: ratings to training targets."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Debug,
    Divisor,
    Kind,
    Quiet,
    SourceFormat,
    TableOutput,
    TableTo,
)
from uiaa_cli.errors import ExitStatus, UiaaError

EPILOG = """Examples:

  uiaa labels AVA.txt > labels.csv                           # gauss-mv, lam 0.5, cap 1.5

  uiaa labels AVA.txt --only generic_test.jpgl -o test.csv     # the standard AVA split

  uiaa labels AVA.txt --exclude generic_test.jpgl -o train.csv

  uiaa labels koniq10k_distributions_sets.csv --kind rsd -o koniq.h5

  uiaa labels AVA.txt --kind binary --delta 1                 # drop 4 < mean <= 6

  uiaa labels AVA.txt --divisor var                          # the authors' released code

  uiaa labels ~/Pictures/2024 --format xmp -o personal.csv   # your own stars: one vote each, 1..5
"""
def labels(
    ratings: Annotated[str, typer.Argument(help="AVA.txt, a counts table, a KonIQ-style table, a long table "
                                                 "of votes (image,score), a folder of photos or XMP sidecars "
                                                 "(their star ratings), or - for stdin.")],
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
    rater_var: Annotated[Optional[float], typer.Option(help="Gaussian kinds: the variance (in rating units^2) of "
                                                            "an image with a single vote, whose votes have none "
                                                            "(default: 1 for --format xmp, else 0: one-hot).",
                                                       callback=NON_NEGATIVE)] = None,
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
        from uiaa_cli.tables.outputs import check_output
        from uiaa_cli.tables.writers import TableWriter
        from uiaa_cli.targets.labels import RATER_VARIANCE, LabelReport, LabelSettings, build_labels, read_id_list
        from uiaa_cli.targets.ratings import iter_ratings

        check_output(output, inputs=[ratings, *(f for f in (only, exclude) if f)])

        try:
            stars = source_format == SourceFormat.xmp or (source_format is None and os.path.isdir(ratings))
            if rater_var is None:
                rater_var = RATER_VARIANCE if stars else 0.0
            settings = LabelSettings(kind.value, lam, cap, delta, threshold, divisor.value, rater_var)
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
                for name, why in source.unreadable:
                    say(f"uiaa labels: left out {name}: {why}")
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
        if source.notes:
            message += f" ({'; '.join(source.notes)})"
        if report.reconstruction_error is not None:
            if settings.rater_var and kind.value in ("gauss-nv", "gauss-mv"):
                message += f"; single votes get variance {settings.rater_var:g} (--rater-var)"
            message += f"; mean reconstruction error |sum b p - mean| = {report.reconstruction_error:.2e}"
        say(message)
    if source.unreadable:
        raise typer.Exit(ExitStatus.INCOMPLETE)
