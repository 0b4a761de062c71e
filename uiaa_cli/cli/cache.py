"""``uiaa cache``: decode and resize a labels table's images once into one HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    AT_LEAST_1,
    PIXELS,
    Debug,
    Progress,
    Quiet,
)
from uiaa_cli.errors import ExitStatus, UiaaError

EPILOG = """Examples:

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
"""
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
            from uiaa_cli.pixels.cache import cache_info

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
        from uiaa_cli.pixels.cache_build import build_cache
        from uiaa_cli.tables.outputs import check_output, output_lock

        check_output(str(output), inputs=[labels_file], what="cache", stdout=False, regular=True)
        with output_lock(output):
            report = build_cache(labels_file, images, output, size=size, workers=workers, resume=resume,
                                 progress=False if quiet else progress, store=store)
        if report.complete_already:
            say(f"uiaa cache: {output} is already complete ({report.stored:,} of {report.total:,} images, the same "
                f"labels, images and size); nothing to do"
                + (f"; {len(report.skipped):,} were skipped" if report.skipped else ""))
            raise typer.Exit(ExitStatus.INCOMPLETE if report.skipped else ExitStatus.DONE)
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
            raise typer.Exit(ExitStatus.INCOMPLETE)
