"""Writing uiaa tables: ``write_table`` (a whole table), ``TableWriter`` (in chunks of rows, memory
flat) and ``concat_tables`` (parts of one table joined), to CSV, TSV, Parquet or HDF5.

``TableWriter`` is the one entry: it picks the output's format (``table_format``) and hands the
chunks to that format's writer (``_CsvWriter``, ``_ParquetWriter``, ``_H5Writer``); files are
written through :mod:`uiaa_cli.tables.outputs` (temporary name and rename, devices written
through), or streamed to stdout. The formats in full: docs/formats.md.

Built on pyarrow's CSV engine (:mod:`uiaa_cli.tables.encoding`): pandas' ``to_csv`` takes ~12 s
for 255k x 24 floats, arrow ~0.5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.encoding import append_h5_rows, arrow_table, create_h5_group, quote_name, write_rows
from uiaa_cli.tables.table import PARQUET_META_KEY, TABLE_GROUP, Table, read_table, table_format


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """The old name of :func:`uiaa_cli.tables.outputs.atomic_output`, which also creates missing parent
    folders (a run's or a model's own folders); a user's output path goes through ``check_output``."""
    from uiaa_cli.tables.outputs import atomic_output

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_output(path)


def write_table(table: Table, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write to ``path`` (``-``: stdout) as CSV, TSV or HDF5, atomically."""
    with TableWriter(path, fmt) as writer:
        writer.write(table)


def concat_tables(paths: list[str], target: str, fmt: str | None = None) -> tuple[int, int]:
    """Write the rows of every table in ``paths``, in order, to ``target``; (rows, columns) written.

    The tables must have the same columns in the same order (the parts of one table, e.g. a sharded
    predict); the attributes are the first table's. One table is in memory at a time.
    """
    with TableWriter(target, fmt) as writer:
        first: Table | None = None
        for path in paths:
            table = read_table(path)
            if first is None:
                first = table
            elif table.names != first.names:
                raise UiaaError(f"its columns ({_shown(table.names)}) differ from those of {paths[0]} "
                                f"({_shown(first.names)}): only parts of one table can be joined",
                                where=at(path))
            try:
                writer.write(table)
            except UiaaError as e:
                raise UiaaError(f"{e.message}: only parts of one table can be joined", where=at(path)) from None
            del table
    assert first is not None
    return writer.rows, len(first.names)


def _shown(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


class TableWriter:
    """Write a table in chunks of rows (memory stays flat), to a file atomically or to stdout.

    The first chunk fixes the columns and attributes. CSV/TSV chunks are formatted in a background
    thread (arrow releases the GIL), so the next chunk is computed while this one is written.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, group: str = TABLE_GROUP) -> None:
        self.path, self.fmt, self.group = str(path), table_format(path, fmt), group
        if self.fmt == "h5" and self.path == "-":
            raise UiaaError("HDF5 cannot go to stdout: give a file name", where=at("-", output=True))
        self.rows = 0
        self._names: list[str] | None = None
        self._atomic: Any = None
        self._format: _FormatWriter = _WRITERS[self.fmt](self.fmt, group)

    def __enter__(self) -> TableWriter:
        tmp = None
        if self.path != "-":
            from uiaa_cli.tables.outputs import atomic_output

            self._atomic = atomic_output(self.path, seekable=self._format.seekable)
            tmp = self._atomic.__enter__()
        self._format.open(tmp)
        return self

    def write(self, table: Table) -> None:
        if self._names is None:
            self._names = table.names
            self._format.start(table)
        elif table.names != self._names:
            raise ValueError(f"chunk columns {table.names} differ from {self._names}")
        if not len(table):
            return
        self.rows += len(table)
        self._format.append(table)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        late: BaseException | None = None
        try:
            self._format.close(failed=exc is not None)
        except BaseException as e:  # a failure in the writing thread, or at the last flush, fails the write
            late = e
        failure = exc or late
        if self.path != "-":
            self._atomic.__exit__(type(failure) if failure else None, failure, None)
        if late is not None and exc is None:
            if isinstance(late, OSError) and self.path == "-":
                from uiaa_cli.tables.outputs import WRITE_ERRNOS, write_error

                if late.errno in WRITE_ERRNOS:
                    raise write_error(late, self.path) from None
            raise late


class _FormatWriter:
    """One format's side of a ``TableWriter``: ``open`` the temporary file (None: stdout), ``start``
    with the first chunk, ``append`` each chunk with rows, ``close`` (``failed``: the write failed)."""

    seekable = False  # the format needs a temporary file it can seek in (no device written through)

    def __init__(self, fmt: str, group: str) -> None:
        self.group = group
        self.out: Any = None
        self.stdout = False

    def open(self, tmp: Path | None) -> None:
        self.stdout = tmp is None
        self.out = sys.stdout.buffer if tmp is None else self._open_file(tmp)

    def _open_file(self, tmp: Path) -> Any:
        raise NotImplementedError

    def start(self, table: Table) -> None:
        raise NotImplementedError

    def append(self, table: Table) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        self._release()

    def _release(self) -> None:
        if self.stdout:
            self.out.flush()
        else:
            self.out.close()  # may fail too (a full disk shows at the last flush)


class _CsvWriter(_FormatWriter):
    """CSV or TSV: the header line, then each chunk's rows, formatted in a background thread."""

    def __init__(self, fmt: str, group: str) -> None:
        super().__init__(fmt, group)
        self.delimiter = "\t" if fmt == "tsv" else ","
        self._pending: Any = None
        self._pool: Any = None

    def _open_file(self, tmp: Path) -> Any:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem().open_output_stream(str(tmp))

    def start(self, table: Table) -> None:
        # plain: the header is the first line; the attributes (provenance) go only to Parquet and HDF5
        head = (self.delimiter.join(quote_name(n, self.delimiter) for n in table.names) + "\n").encode()
        self.out.write(head)

    def append(self, table: Table) -> None:
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1)
        self._pending = self._pool.submit(write_rows, table, self.out, self.delimiter)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self, failed: bool) -> None:
        late: BaseException | None = None
        try:
            self._wait()
        except BaseException as e:  # a failure in the writing thread fails the whole write
            late = e
        if self._pool is not None:
            self._pool.shutdown()
        try:
            self._release()
        except BaseException as e:
            late = late or e
        if late is not None:
            raise late


class _ParquetWriter(_FormatWriter):
    """Parquet: the attributes as schema metadata, one row group per chunk, the footer at the close."""

    def __init__(self, fmt: str, group: str) -> None:
        super().__init__(fmt, group)
        self._parquet: Any = None

    def _open_file(self, tmp: Path) -> Any:
        return open(tmp, "wb")  # noqa: SIM115 - closed in close()

    def start(self, table: Table) -> None:
        import pyarrow.parquet as pq

        schema = arrow_table(table).schema
        if table.attrs:
            schema = schema.with_metadata({PARQUET_META_KEY: json.dumps(table.attrs).encode()})
        self._parquet = pq.ParquetWriter(self.out, schema)

    def append(self, table: Table) -> None:
        self._parquet.write_table(arrow_table(table, self._parquet.schema))  # one row group per chunk

    def close(self, failed: bool) -> None:
        if self._parquet is not None:
            self._parquet.close()  # the footer: a Parquet file is complete only now
        self._release()


class _H5Writer(_FormatWriter):
    """HDF5: a group of growable datasets, one per column, built in memory and written out at the close."""

    seekable = True

    def _open_file(self, tmp: Path) -> Any:
        import h5py

        # Built in memory (the core driver) and written out at the end by Python: HDF5's own
        # writes on a full disk crash h5py's close (a segfault), Python's fail cleanly.
        self._tmp = tmp
        return h5py.File(f"{tmp}.core", "w", driver="core", backing_store=False)

    def start(self, table: Table) -> None:
        create_h5_group(self.out, table, self.group)

    def append(self, table: Table) -> None:
        g = self.out[self.group]
        for name, values in table.columns.items():
            if (values.dtype.kind in "USO") != (g[name].dtype.kind == "O") or \
                    (values.dtype.kind == "f" and g[name].dtype.kind in "iu"):
                raise UiaaError(f"column {name!r} is {values.dtype} here and {g[name].dtype} in the rows before")
        append_h5_rows(g, table)

    def close(self, failed: bool) -> None:
        if failed:
            self.out.close()
        else:
            _h5_image_to(self.out, self._tmp)


_WRITERS: dict[str, type[_FormatWriter]] = {"csv": _CsvWriter, "tsv": _CsvWriter, "parquet": _ParquetWriter,
                                            "h5": _H5Writer}


def _h5_image_to(f: Any, path: Path) -> None:
    """Write an in-memory (core driver) HDF5 file's bytes to ``path`` and close it."""
    try:
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with open(path, "wb") as out:
        out.write(image)
