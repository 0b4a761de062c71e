"""``uiaa rate``: stars and labels from scores, into XMP sidecars (or JPEGs) where photo apps read them."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    NON_NEGATIVE,
    UNIT,
    BatchSize,
    Debug,
    DecodeWorkers,
    Device,
    Engine,
    EngineName,
    OutputFormat,
    Quiet,
)
from uiaa_cli.errors import ExitStatus, UiaaError

if TYPE_CHECKING:
    from uiaa_cli.catalogue.rating import RateReport, RateSettings

EPILOG = """Examples:

  uiaa rate shoot/ -m model.pt                      # stars into IMG_0001.CR2.xmp (darktable, digiKam)

  uiaa rate shoot/ -m model.pt --sidecar base       # IMG_0001.xmp (Lightroom Classic, Capture One)

  uiaa rate shoot/ --cull -m model.pt               # bursts grouped, the best frame of each Green

  uiaa rate shoot/ --cull --dry-run -o cull.csv     # only the table: image, score, group, pick, stars, ...

  uiaa predict shoot/ -o scores.csv && uiaa rate scores.csv   # from a predictions table

  uiaa rate shoot/ --stars cut:6,5.5,5,4.5          # fixed cut-offs on the model's scale

  uiaa rate shoot/ --embed                          # JPEGs get embedded XMP; other files sidecars

An existing sidecar is merged, never replaced (darktable's history and Lightroom's develop settings
stay as they are); a rating or label the photographer set is kept unless --overwrite. A RAW and a
JPEG of the same name are one shot, rated from the RAW. Exit status: 0 done, 1 some photo could not
be scored or some sidecar written (each named on stderr), 2 usage or input error.
"""


class SidecarStyle(str, Enum):
    ext = "ext"
    base = "base"


class Grouping(str, Enum):
    both = "both"
    hash = "hash"
    time = "time"


class PickMode(str, Enum):
    label = "label"
    bump = "bump"


def rate(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUTS", help="A predictions table (image, score: uiaa predict -o), or photos: files, folders "
                               "(recursive), - for paths on stdin, scored with --model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The checkpoint to score photos with "
                                                 "(default: $UIAA_MODEL, else the newest under ./runs).")] = None,
    sidecar: Annotated[SidecarStyle, typer.Option(help="ext: IMG.CR2.xmp (darktable, digiKam); base: IMG.xmp "
                                                       "(Lightroom Classic, Capture One).")] = SidecarStyle.ext,
    embed: Annotated[bool, typer.Option("--embed", help="Write into the JPEG itself (other formats: a "
                                                        "sidecar).")] = False,
    stars_rule: Annotated[str, typer.Option("--stars", help="top:A%,B%,C%,D%,E% (shares of the photos for 5..1 "
                                                            "stars, by rank) or cut:S5,S4,S3,S2 (the least score "
                                                            "for 5, 4, 3 and 2 stars).")] = "top:5%,15%,30%,30%,20%",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace ratings and labels the photographer "
                                                                "set (by default they are kept).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write no sidecar: print the plan (a table) on "
                                                            "stdout, or write it to -o.")] = False,
    cull: Annotated[bool, typer.Option("--cull", help="Group bursts and near-duplicates; the best sharp frame "
                                                      "of each group is its pick.")] = False,
    group: Annotated[Grouping, typer.Option(help="--cull: both (similar pictures within one run of capture "
                                                 "times), hash (similar pictures) or time (capture times "
                                                 "alone).")] = Grouping.both,
    burst_gap: Annotated[float, typer.Option(help="--cull: most seconds between two frames of one burst "
                                                  "(EXIF DateTimeOriginal).", callback=NON_NEGATIVE)] = 2.0,
    max_distance: Annotated[int, typer.Option(help="--cull: most bits (of 63) between the hashes of two "
                                                   "frames of one group.")] = 16,
    min_similarity: Annotated[float, typer.Option(help="--cull: least correlation of two frames' "
                                                       "low-frequency coefficients.")] = 0.7,
    blur_ratio: Annotated[float, typer.Option(help="--cull: a frame less sharp than this share of its group's "
                                                   "sharpest is never the pick.", callback=UNIT)] = 0.5,
    pick: Annotated[PickMode, typer.Option(help="--cull: label (the pick's xmp:Label is Green) or bump (a "
                                                "burst's pick gets one star more).")] = PickMode.label,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write the table (image, score, "
                                                   "[group, pick,] stars, rating, label, xmp, action) here "
                                                   "(.csv, .tsv, .parquet, .h5; - for stdout).")] = None,
    to: OutputFormat = None,
    images: Annotated[Optional[str], typer.Option(help="Folder the photos are named from (a table's relative "
                                                       "names; default: the current folder).")] = None,
    device: Device = "auto",
    engine: Engine = EngineName.auto,
    batch_size: BatchSize = 32,
    workers: DecodeWorkers = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write star ratings (and, with --cull, pick labels) into XMP sidecars or JPEGs from a model's scores."""
    with handled("rate", quiet, debug):
        from uiaa_cli.catalogue import rating
        from uiaa_cli.catalogue.stars import parse_stars
        from uiaa_cli.catalogue.xmp import exiv2_module

        if not inputs:
            raise UiaaError("no inputs: give a predictions table, or photos (files, folders, -) with --model")
        settings = rating.RateSettings(parse_stars(stars_rule), sidecar.value, embed, overwrite, cull, group.value,
                                       burst_gap, max_distance, min_similarity, blur_ratio, pick.value, workers)
        if not 0 <= max_distance <= 63:
            raise UiaaError(f"--max-distance must lie in 0..63 bits, got {max_distance}")
        if not -1 <= min_similarity <= 1:
            raise UiaaError(f"--min-similarity must lie in [-1, 1], got {min_similarity}")
        if output is not None:
            from uiaa_cli.tables.outputs import check_output
            from uiaa_cli.tables.table import table_format

            check_output(output, inputs=[*inputs, *([model] if model else [])])
            table_format(output, to.value if to else None)
        exiv2_module()  # no photo extra: one line now, before any scoring
        predict_failed = 0
        if len(inputs) == 1 and rating.is_predictions(inputs[0]):
            paths, scores, used = rating.read_predictions(inputs[0], images)
        else:
            paths, scores, used, predict_failed = rating.predict_scores(
                inputs, model=model, images=images, device=device, batch_size=batch_size, workers=workers,
                engine=engine.value, progress=sys.stderr.isatty() and not quiet,
                note=lambda line: say(f"uiaa rate: {line}"))
        report = rating.RateReport(predict_failed=predict_failed)
        planned = rating.plan(paths, scores, settings, used, report)
        if not dry_run:
            rating.apply(planned, report)
        target = output if output is not None else ("-" if dry_run else None)
        if target is not None:
            from uiaa_cli.tables.writers import write_table

            write_table(planned.table, target, to.value if to else None)
        for where, why in report.failed:
            say(f"uiaa rate: {where}: {why}")
        say(summary(report, settings, dry_run))
    if report.failed or report.predict_failed:
        raise typer.Exit(ExitStatus.INCOMPLETE)


def summary(r: RateReport, s: RateSettings, dry_run: bool) -> str:
    """One line: what was (or would be) written and kept."""
    verb = "would write" if dry_run else "wrote"
    written = (f"{r.created:,} new, {r.written - r.created:,} merged" if not dry_run else "")
    parts = [f"uiaa rate: {r.photos:,} photos ({s.stars.describe()})"]
    if dry_run:
        parts.append(f"{verb} nothing (--dry-run)")
    else:
        parts.append(f"{verb} {r.written:,} {'sidecar or JPEG' if s.embed else 'sidecar'}s ({written}), "
                     f"{r.unchanged:,} unchanged")
    if r.kept_ratings or r.kept_labels:
        parts.append(f"kept {r.kept_ratings:,} hand-set ratings and {r.kept_labels:,} labels (--overwrite replaces "
                     "them)")
    if r.shared:
        parts.append(f"{r.shared:,} files share their shot's {s.sidecar} sidecar, written from the shot's RAW")
    if s.cull:
        parts.append(f"{r.groups:,} groups, {r.bursts:,} of 2+ frames, one pick each")
    if r.failed or r.predict_failed:
        parts.append(f"{len(r.failed) + r.predict_failed:,} failed (named above)")
    return "; ".join(parts)
