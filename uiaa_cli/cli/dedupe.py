"""``uiaa dedupe``: near-duplicate images within a data set or between two."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    Debug,
    Quiet,
    TableOutput,
    TableTo,
)
from uiaa_cli.errors import ExitStatus

EPILOG = """Examples:

  uiaa dedupe test.h5 train.h5 > dupes.csv      # test images that are also in train

  uiaa dedupe ava.h5 -o dupes.csv               # near-duplicates within one cache

  uiaa dedupe labels.csv --images ava/images    # a labels table: its images decoded

  uiaa labels AVA.txt --exclude dupes.csv -o train.csv   # then a clean split

Exit status: 0 done, 1 some images could not be read (listed on stderr, the rest compared), 2 usage
or input error.
"""
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
        from uiaa_cli.pixels.dedupe import dedupe as find_duplicates
        from uiaa_cli.tables.writers import TableWriter

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
        raise typer.Exit(ExitStatus.INCOMPLETE)
