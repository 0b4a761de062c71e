"""What ``uiaa predict`` scores: every input of the command line, one at a time, in order.

An input argument is one of:

- ``-``: a list of paths on stdin, one per line (blank lines skipped);
- a folder: its images, recursively, sorted (``images.iter_images``: every format Pillow reads,
  RAW and HEIC/HEIF whether or not the photo extra is installed; hidden entries skipped, and
  named pipes, sockets and devices too, so a pipe among the photos never hangs the run);
- a WebDataset tar shard (any ``.tar`` file, e.g. ``shard-000123.tar`` from img2dataset): samples
  are runs of members with the same ``__key__``, the member's path without its extensions (the
  folder kept, everything after the first dot of the file name dropped); a sample's image is its
  first member with an image extension (RAW members are not decoded: a RAW is told by its name),
  other members (``.json``, ``.txt``, ...) are ignored. The
  shard is read with :mod:`tarfile` header by header (members are never extracted, and the image
  bytes are read by the worker that decodes them);
- a cache (``uiaa cache``'s HDF5): its stored pixels;
- a labels table (``.csv``, ``.tsv``, ``.parquet``, ``.h5``, with vote or target columns): its
  ``image`` names, resolved as ``uiaa cache`` does under ``--images`` (default: the table's folder);
- a table of paths (``.csv``, ``.tsv``, ``.parquet``, ``.h5`` with *no* vote or target column): the
  values of its first column named ``path``, ``image``, ``file``, ``filepath`` or ``filename``; a
  relative path is relative to ``--images`` (default: the table's folder). CSV and Parquet are read
  in blocks, so a table of millions of paths is never held whole;
- anything else: an image file (one that cannot be read fails when it is decoded, on one line).

Each input becomes an :class:`Input` with its position in the whole sequence (``index``, what
``--shard K/N`` and ``--resume`` count with) and a ``source`` that a decoding worker turns into
pixels (:func:`uiaa_cli.pixels.decoding.load`). Arguments are checked up front (a missing table column, a
cache of the wrong size, an empty folder are one-line errors before any work); the inputs
themselves are produced lazily, so memory does not grow with their number.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from uiaa_cli.errors import UiaaError, at

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".h5", ".hdf5", ".parquet", ".pq")
TAR_SUFFIXES = (".tar",)
PATH_COLUMNS = ("path", "image", "file", "filepath", "filename")
LABEL_COLUMNS = ("votes", "mean")  # besides vote columns (named by a number) and p_* targets
BLOCK = 65536  # rows of a table of paths read at a time


@dataclass(frozen=True)
class Input:
    """One thing to score.

    ``name``: what the output calls it (the path, the table's name, or a shard sample's
    ``__key__``); ``shard``: the tar shard it came from ('' otherwise); ``source``: how a worker
    gets its pixels, a small tuple: ``("file", path)``, ``("table", root, name)``,
    ``("cache", path, row)``, ``("tar", path, offset, size)`` or ``("error", reason)`` (an input
    known to be unusable before decoding, e.g. a shard sample with no image member).
    """

    index: int
    name: str
    shard: str
    source: tuple


@dataclass
class Inputs:
    """The command line's inputs, ready to be iterated (once per iteration, lazily).

    ``has_shards``: some argument is a tar shard, so the output gets a ``shard`` column.
    ``arguments``: what identifies them for ``--resume`` (absolute paths, the image root).
    """

    producers: list[Callable[[], Iterator[tuple[str, str, tuple]]]]
    has_shards: bool
    arguments: list[str]

    def __iter__(self) -> Iterator[Input]:
        index = 0
        for produce in self.producers:
            for name, shard, source in produce():
                yield Input(index, name, shard, source)
                index += 1


def open_inputs(arguments: list[str], size: int, images: str | None = None,
                stdin: TextIO | None = None) -> Inputs:
    """Check every argument and return the inputs they stand for (see the module doc)."""
    if not arguments:
        raise UiaaError("no inputs: give image files, folders, - (paths on stdin), tar shards or a table")
    if arguments.count("-") > 1:
        raise UiaaError("- (paths on stdin) can be given only once")
    producers, has_shards, identity = [], False, []
    for item in arguments:
        kind = input_kind(item)
        if kind == "stdin":
            producers.append(lambda: stdin_paths(stdin or paths_stdin()))
        elif kind == "folder":
            producers.append(folder_images(item))
        elif kind == "tar":
            producers.append(lambda path=item: tar_samples(path))
            has_shards = True
        elif kind == "table":
            producers.append(table_inputs(item, size, images))
        else:
            producers.append(lambda path=item: iter([(path, "", ("file", path))]))
        identity.append(f"{kind}:{item if kind == 'stdin' else os.path.abspath(item)}")
    if images is not None:
        identity.append(f"images:{os.path.abspath(images)}")
    return Inputs(producers, has_shards, identity)


def input_kind(item: str) -> str:
    """``stdin``, ``folder``, ``tar``, ``table`` or ``image`` (anything else, decoded as an image)."""
    if item == "-":
        return "stdin"
    try:
        mode = os.stat(item).st_mode
    except OSError:
        return "image"  # missing: one line when it is decoded, like any unreadable image
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        return "image"  # a pipe, socket or device: refused by the decoder without opening it
    from uiaa_cli.tables.formats import read_head, sniff

    suffix = Path(item).suffix.lower()
    if suffix in TAR_SUFFIXES:
        return "tar"
    if suffix in TABLE_SUFFIXES or sniff(read_head(item)) != "text":  # HDF5 or Parquet whatever its name
        return "table"
    return "image"


# --------------------------------------------------------------------------------- producers


def paths_stdin() -> TextIO:
    """stdin, decoded as file names are (a name that is not UTF-8 is read, whatever the locale)."""
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding=sys.getfilesystemencoding(), errors="surrogateescape")
    return sys.stdin


def stdin_paths(stream: TextIO) -> Iterator[tuple[str, str, tuple]]:
    """Paths on stdin, one per line, read as they come (``find | uiaa predict -`` starts at once)."""
    for line in stream:
        path = line.rstrip("\r\n")
        if path.strip():
            yield path, "", ("file", path)


def folder_images(folder: str) -> Callable[[], Iterator[tuple[str, str, tuple]]]:
    from uiaa_cli.pixels.images import iter_images

    if next(iter_images(folder), None) is None:
        raise UiaaError("no images in this folder", where=at(folder))
    return lambda: ((path, "", ("file", path)) for path in iter_images(folder))


def tar_samples(path: str) -> Iterator[tuple[str, str, tuple]]:
    """The samples of a WebDataset shard, in order: ``(__key__, shard, source)``.

    A sample without an image member, or a shard that is cut short or corrupt, gives one
    ``("error", reason)`` input (one line on stderr; the run goes on with the next shard).
    """
    import tarfile

    from uiaa_cli.pixels.images import readable_extensions
    from uiaa_cli.pixels.photo import RAW_EXTENSIONS

    # A RAW is told by its name, and a member reaches the decoder as bytes without one: not decoded.
    extensions = readable_extensions() - RAW_EXTENSIONS
    key: str | None = None
    image: tuple | None = None
    raw_member = False
    try:
        tar = tarfile.open(path, "r:")  # seekable: member data is skipped, never read, here
    except (tarfile.TarError, OSError) as e:
        yield "", path, ("error", f"not a readable tar shard ({reason(e)})")
        return
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as e:
                after = f" after sample {key}" if key is not None else ""
                yield key or "", path, ("error", f"truncated or corrupt tar shard{after} ({reason(e)})")
                return
            tar.members.clear()  # tarfile keeps every header it has read: memory would grow
            if member is None or (member.isfile() and sample_key(member.name) != key):
                if key is not None:
                    why = ("only a RAW image member, and RAW members of shards are not decoded" if raw_member
                           else "no image member in this sample")
                    yield key, path, image or ("error", why)
                if member is None:
                    return
                key, image, raw_member = sample_key(member.name), None, False
            if member.isfile() and image is None and member_extension(member.name) in extensions:
                image = ("tar", path, member.offset_data, member.size)
            raw_member = raw_member or (member.isfile() and member_extension(member.name) in RAW_EXTENSIONS)


def sample_key(member: str) -> str:
    """WebDataset's ``__key__``: the path without the extensions of its file name."""
    folder, _, base = member.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def member_extension(member: str) -> str:
    """``.jpg`` for ``a/b.jpg`` and for ``a/b.seg.jpg``: the last extension, lower case."""
    base = member.rpartition("/")[2]
    return "." + base.rsplit(".", 1)[1].lower() if "." in base else ""


def reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def table_inputs(path: str, size: int, images: str | None) -> Callable[[], Iterator[tuple[str, str, tuple]]]:
    """A cache, a labels table or a table of paths (see the module doc), checked now."""
    from uiaa_cli.pixels.cache import is_cache

    if is_cache(path):
        from uiaa_cli.pixels.cache import CacheReader

        with CacheReader(path) as reader:
            if reader.size != size:
                raise UiaaError(f"the cache holds {reader.size} px images and the model takes {size} px: "
                                "score its labels table with --images instead, or rebuild it with "
                                f"'uiaa cache --size {size}'", where=at(path))
            names = reader.table["image"].astype(str)
        return lambda: ((name, "", ("cache", path, row)) for row, name in enumerate(names.tolist()))
    columns = table_columns(path)
    if is_labels_table(columns):
        from uiaa_cli.pixels.images import image_table

        table, root = image_table(path, images)
        names = table["image"].astype(str)
        return lambda: ((name, "", ("table", str(root), name)) for name in names.tolist())
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise UiaaError(f"no column of paths (one of {', '.join(PATH_COLUMNS)}) and no vote or target "
                        "columns: not a table of images", where=at(path))
    root = Path(images) if images is not None else Path(path).resolve().parent
    if not root.is_dir():
        raise UiaaError("no such folder of images (give it with --images)", where=at(str(root)))

    def produce() -> Iterator[tuple[str, str, tuple]]:
        for block in table_column_blocks(path, column):
            for value in block:
                file = value if os.path.isabs(value) else os.path.join(root, value)
                yield value, "", ("file", file)
    return produce


def is_labels_table(columns: list[str]) -> bool:
    """A labels (or predictions) table: vote columns named by a number, ``p_*`` targets, votes, mean."""
    def numeric(name: str) -> bool:
        try:
            float(name)
            return True
        except ValueError:
            return False
    return "image" in columns and any(c.startswith("p_") or c in LABEL_COLUMNS or numeric(c) for c in columns)


def table_columns(path: str) -> list[str]:
    """A table's column names, from its header alone."""
    kind = table_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if kind == "h5":
            from uiaa_cli.tables.table import read_table

            return read_table(path).names
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except UiaaError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow and h5py raise many types on bad files
        raise UiaaError(f"not a readable table ({reason(e)})", where=at(path)) from None
    import csv

    header = csv_header(head)
    return next(csv.reader([header], delimiter=csv_delimiter(kind, header)), [])


def table_kind(path: str) -> str:
    """``h5`` or ``parquet`` by content, else ``tsv`` or ``csv`` by name."""
    from uiaa_cli.tables.formats import read_head, sniff

    kind = sniff(read_head(path))
    if kind != "text":
        return kind
    return "tsv" if Path(path).suffix.lower() in (".tsv", ".tab") else "csv"


def csv_header(head: bytes) -> str:
    """The header line of CSV/TSV bytes (after a byte-order mark and a ``# uiaa:`` line)."""
    lines = csv_lines(head.decode("utf-8", "replace").lstrip("\ufeff"))
    return lines[0] if lines else ""


def csv_lines(text: str) -> list[str]:
    """The lines of ``text`` from the header on (leading ``#`` comment lines dropped)."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return lines[first:]


def csv_delimiter(kind: str, header: str) -> str:
    return "\t" if kind == "tsv" or header.count("\t") > header.count(",") else ","


def table_column_blocks(path: str, column: str) -> Iterator[list[str]]:
    """The values of one column, block by block (Parquet row groups / CSV blocks), as strings."""
    import pyarrow as pa

    kind = table_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches: Any = pq.ParquetFile(path).iter_batches(batch_size=BLOCK, columns=[column])
        elif kind in ("csv", "tsv"):
            import pyarrow.csv as pacsv

            with open(path, "rb") as f:
                head = f.read(1 << 16)
            text = head.decode("utf-8", "replace").lstrip("\ufeff")
            skip = len(text.splitlines()) - len(csv_lines(text))  # the "# uiaa: ..." line of older files
            delimiter = csv_delimiter(kind, csv_header(head))
            batches = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(skip_rows=skip, block_size=1 << 22),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()},
                                                     strings_can_be_null=False))
        else:  # HDF5: read whole (uiaa's own tables; their writer keeps them modest)
            from uiaa_cli.tables.table import read_table

            yield [str(v) for v in read_table(path)[column].tolist()]
            return
        for batch in batches:
            values = batch.column(0)
            yield ["" if v is None else str(v) for v in values.to_pylist()]
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise UiaaError(f"not a readable table ({reason(e)})", where=at(path)) from None


# --------------------------------------------------------------------------------- sharding


def parse_shard(text: str | None) -> tuple[int, int]:
    """``K/N`` (0 <= K < N) as ``(K, N)``; None is the whole, ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UiaaError(f"--shard {text}: give K/N, job K of N counted from 0 (e.g. 0/4 .. 3/4)") from None
    if n < 1 or not 0 <= k < n:
        raise UiaaError(f"--shard {text}: need N >= 1 and 0 <= K < N (jobs are counted from 0)")
    return k, n


def select_shard(inputs: Iterator[Input], k: int, n: int) -> Iterator[Input]:
    """Job ``k`` of ``n``: the inputs whose position in the whole sequence is ``k`` modulo ``n``.

    Every job enumerates the same sequence (same arguments, same order), so the ``n`` jobs
    together take each input exactly once, and each gets an equal share whatever the names.
    """
    if n == 1:
        yield from inputs
        return
    for item in inputs:
        if item.index % n == k:
            yield item
