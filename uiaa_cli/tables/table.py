"""uiaa tables: one image per row, named columns, a few attributes; CSV, TSV, Parquet or HDF5.

A table is a dict of equal-length numpy columns plus ``attrs`` (kind, scale, parameters: the
provenance). CSV and TSV are plain (the header is the first line, so every CSV reader takes them
with default options) and carry no attributes: everything a command needs is in the column names.
Parquet keeps the attributes as schema metadata (key ``uiaa``, JSON), HDF5 as attributes of the
table's group. Files written by older versions with a ``# uiaa: {json}`` first line still read.
Inputs are recognised by content first (:mod:`uiaa_cli.tables.formats`), outputs by extension or ``--to``;
writing goes through :mod:`uiaa_cli.tables.outputs` (temporary name and rename, devices written through).

Built on pyarrow's CSV engine: pandas' ``to_csv`` takes ~12 s for 255k x 24 floats, arrow ~0.5 s.
pyarrow is imported so as never to pull in pandas (``pa.array`` would), keeping start-up fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at

FORMATS = ("csv", "tsv", "parquet", "h5")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
              ".h5": "h5", ".hdf5": "h5"}
PARQUET_META_KEY = b"uiaa"
TABLE_GROUP = "table"
META_PREFIX = b"# uiaa: "
STRING_COLUMNS = ("image",)


@dataclass
class Table:
    """Named, equal-length numpy columns (strings as ``str`` arrays) and JSON-able attributes."""

    columns: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def take(self, rows: np.ndarray) -> Table:
        """The rows selected by a boolean mask or an index array, in that order."""
        return Table({k: v[rows] for k, v in self.columns.items()}, dict(self.attrs))

    def matrix(self, names: list[str]) -> np.ndarray:
        """Columns ``names`` stacked as a float64 ``(N, len(names))`` matrix."""
        if not names:
            return np.zeros((len(self), 0))
        return np.stack([np.asarray(self.columns[n], dtype=np.float64) for n in names], axis=1)


# ----------------------------------------------------------------------------------- formats


def table_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``csv``, ``tsv``, ``parquet`` or ``h5`` of an output, from ``--to`` or the file's extension.

    ``-`` (stdout), a device and a named pipe default to CSV; any other name must have an
    extension the CLI knows: ``x.txt`` is an error, never a silent CSV.
    """
    if fmt:
        fmt = fmt.lower().lstrip(".")
        fmt = {"hdf5": "h5", "tab": "tsv", "txt": "tsv", "pq": "parquet"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise UiaaError(f"unknown format {fmt!r}; choose csv, tsv, parquet or h5")
        return fmt
    suffix = Path(str(path)).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    from uiaa_cli.tables.outputs import is_special

    if str(path) == "-" or is_special(path):
        return "csv"
    raise UiaaError(f"unknown table extension {suffix or '(none)'!r}: name it .csv, .tsv, .parquet or .h5, "
                    "or give --to", where=at(str(path), output=True))


def is_hdf5(path: str | os.PathLike) -> bool:
    """True for a file that starts with the HDF5 signature."""
    from uiaa_cli.tables.formats import read_head, sniff

    return sniff(read_head(str(path))) == "h5"


# ----------------------------------------------------------------------------------- reading


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole of a file, or of stdin for ``-``; a missing file is a one-line error."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UiaaError("no such file", where=at(str(path))) from None
    except IsADirectoryError:
        raise UiaaError("is a folder, not a table", where=at(str(path))) from None
    except OSError as e:
        raise UiaaError(e.strerror or str(e), where=at(str(path))) from None


def read_table(path: str | os.PathLike, fmt: str | None = None, *, data: bytes | None = None) -> Table:
    """Read a uiaa table: HDF5 and Parquet by their signatures, else text (CSV/TSV, delimiter sniffed
    unless the name or ``fmt`` says TSV or CSV)."""
    from uiaa_cli.tables.formats import read_head, sniff

    path = str(path)
    kind = sniff(data[:8] if data is not None else read_head(path))
    if kind == "h5" and data is None:
        return read_h5_table(path)
    if data is None:
        data = read_bytes(path)
        kind = sniff(data[:8])  # stdin or a pipe: known only now
    if kind == "h5" and (path == "-" or not os.path.isfile(path)):
        raise UiaaError("HDF5 cannot be read from stdin or a pipe; give the file's name", where=at(path))
    if kind == "h5":
        return read_h5_table(path)
    if kind == "parquet":
        return read_parquet_table(data, path)
    named = fmt or EXTENSIONS.get(Path(path).suffix.lower())
    delimiter = {"tsv": "\t", "csv": ","}.get(named or "")
    return parse_delimited(data, path, delimiter=delimiter)


def read_parquet_table(data: bytes, path: str) -> Table:
    """A Parquet file's columns as numpy, its ``uiaa`` schema metadata as the attributes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise UiaaError(f"not a readable Parquet file: {str(e).splitlines()[0]}", where=at(path)) from None
    meta = arrow.schema.metadata or {}
    attrs: dict[str, Any] = {}
    if PARQUET_META_KEY in meta:
        try:
            attrs = json.loads(meta[PARQUET_META_KEY])
        except ValueError:
            raise UiaaError("unreadable 'uiaa' metadata", where=at(path)) from None
    if len(set(arrow.column_names)) != len(arrow.column_names):
        raise UiaaError("duplicate column names", where=at(path))
    return Table({name: arrow_to_numpy(arrow.column(name)) for name in arrow.column_names}, attrs)


def sniff_delimiter(header: bytes) -> str:
    """Tab if the header line has tabs and no commas, else comma."""
    return "\t" if header.count(b"\t") > header.count(b",") else ","


def parse_delimited(data: bytes, path: str, delimiter: str | None = None) -> Table:
    """Parse CSV/TSV bytes with a header (and an optional ``# uiaa:`` line) into a Table."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from uiaa_cli.tables.formats import check_text

    attrs: dict[str, Any] = {}
    skip = 0
    data = check_text(data, path)
    if data.startswith(b"#"):
        first, _, _ = data.partition(b"\n")
        if first.startswith(META_PREFIX):
            try:
                attrs = json.loads(first[len(META_PREFIX):])
            except ValueError:
                raise UiaaError("unreadable '# uiaa:' attribute line", where=at(path, 1)) from None
        skip = 1
    body = data.split(b"\n", skip)[-1] if skip else data
    if not body.strip():
        raise UiaaError("empty input: no header and no rows", where=at(path))
    header = body.partition(b"\n")[0]
    delimiter = delimiter or sniff_delimiter(header)

    bad_rows: list[Any] = []
    bad_rows_known = len(body) < 1 << 20  # arrow knows row numbers only when reading on one thread

    def on_invalid(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    try:
        arrow = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(use_threads=not bad_rows_known),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in STRING_COLUMNS}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        if bad_rows:
            row = bad_rows[0]
            line = None if row.number is None or row.number < 0 else row.number + skip
            raise UiaaError(
                f"expected {row.expected_columns} columns, found {row.actual_columns}", where=at(path, line)
            ) from None
        raise UiaaError(f"not a readable table: {str(e).splitlines()[0]}", where=at(path)) from None
    if len(set(arrow.column_names)) != len(arrow.column_names):
        raise UiaaError("duplicate column names in the header", where=at(path, skip + 1))
    columns = {name: arrow_to_numpy(arrow.column(name)) for name in arrow.column_names}
    return Table(columns, attrs)


def arrow_to_numpy(column: Any) -> np.ndarray:
    """An arrow column as numpy: strings as ``str``, integers as int64, other numbers as float64."""
    import pyarrow as pa

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    t = col.type
    # no fill_null/pa.scalar here: they import pandas (~0.3 s of start-up)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array(["" if v is None else v for v in col.to_pylist()] if col.null_count else col.to_pylist(),
                        dtype=str)
    if pa.types.is_null(t):
        return np.full(len(col), np.nan)
    if pa.types.is_integer(t) and col.null_count == 0:
        return _buffer_values(col.cast(pa.int64()), np.int64)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        return _buffer_values(col.cast(pa.float64()), np.float64)
    return np.array(["" if v is None else str(v) for v in col.to_pylist()], dtype=str)


def _buffer_values(col: Any, dtype: type) -> np.ndarray:
    """A primitive arrow array's values straight from its buffers, nulls as NaN (``to_numpy`` imports pandas)."""
    n, offset = len(col), col.offset
    validity, data = col.buffers()[:2]
    values = np.frombuffer(data, dtype=dtype)[offset:offset + n].copy()
    if col.null_count:
        valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[offset:offset + n]
        values[valid == 0] = np.nan
    return values


def read_h5_table(path: str, group: str = TABLE_GROUP) -> Table:
    """Read the table stored under ``group`` in an HDF5 file (a uiaa table or cache)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if group not in f:
                raise UiaaError(f"no '{group}' group: not a uiaa table or cache", where=at(path))
            g = f[group]
            if not isinstance(g, h5py.Group):
                raise UiaaError(f"'{group}' is not a group of columns: not a uiaa table or cache", where=at(path))
            names = [from_h5_attr(n) for n in g.attrs.get("columns", list(g.keys()))]
            columns = {}
            for name in names:
                ds = g.get(name)
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
                    raise UiaaError(f"column {name!r} is listed but {'missing' if ds is None else 'not 1-D'}",
                                    where=at(path))
                if h5py.check_string_dtype(ds.dtype) is not None:
                    try:
                        columns[name] = np.array(ds.asstr()[()], dtype=str)
                    except UnicodeDecodeError:
                        raise UiaaError(f"column {name!r} holds bytes that are not UTF-8", where=at(path)) from None
                elif ds.dtype.kind in "biuf":
                    columns[name] = ds[()]
                else:
                    raise UiaaError(f"column {name!r} has an unsupported type {ds.dtype}", where=at(path))
            attrs = {k: from_h5_attr(v) for k, v in g.attrs.items() if k != "columns"}
    except FileNotFoundError:
        raise UiaaError("no such file", where=at(path)) from None
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UiaaError(f"not a readable HDF5 file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        where=at(path)) from None
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in list(lengths.items())[:6])
        raise UiaaError(f"columns of different lengths ({shown})", where=at(path))
    return Table(columns, attrs)


def from_h5_attr(value: Any) -> Any:
    """An HDF5 attribute as plain JSON-able Python."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [from_h5_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


# ----------------------------------------------------------------------------------- writing


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
        self._out: Any = None
        self._pending: Any = None
        self._pool: Any = None
        self._parquet: Any = None
        self._tmp: Any = None

    def __enter__(self) -> TableWriter:
        if self.path != "-":
            from uiaa_cli.tables.outputs import atomic_output

            self._atomic = atomic_output(self.path, seekable=self.fmt == "h5")
            tmp = self._atomic.__enter__()
            if self.fmt == "h5":
                import h5py

                # Built in memory (the core driver) and written out at the end by Python: HDF5's own
                # writes on a full disk crash h5py's close (a segfault), Python's fail cleanly.
                self._out = h5py.File(f"{tmp}.core", "w", driver="core", backing_store=False)
                self._tmp = tmp
            elif self.fmt == "parquet":
                self._out = open(tmp, "wb")  # noqa: SIM115 - closed in __exit__
            else:
                import pyarrow.fs

                self._out = pyarrow.fs.LocalFileSystem().open_output_stream(str(tmp))
        else:
            self._out = sys.stdout.buffer
        return self

    def write(self, table: Table) -> None:
        if self._names is None:
            self._start(table)
        elif table.names != self._names:
            raise ValueError(f"chunk columns {table.names} differ from {self._names}")
        if not len(table):
            return
        self.rows += len(table)
        if self.fmt == "h5":
            g = self._out[self.group]
            for name, values in table.columns.items():
                if (values.dtype.kind in "USO") != (g[name].dtype.kind == "O") or \
                        (values.dtype.kind == "f" and g[name].dtype.kind in "iu"):
                    raise UiaaError(f"column {name!r} is {values.dtype} here and {g[name].dtype} in the rows before")
            append_h5_rows(g, table)
            return
        if self.fmt == "parquet":
            self._parquet.write_table(arrow_table(table, self._parquet.schema))  # one row group per chunk
            return
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1)
        self._pending = self._pool.submit(write_rows, table, self._out, self._delimiter)

    def _start(self, table: Table) -> None:
        self._names = table.names
        if self.fmt == "h5":
            create_h5_group(self._out, table, self.group)
            return
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            schema = arrow_table(table).schema
            if table.attrs:
                schema = schema.with_metadata({PARQUET_META_KEY: json.dumps(table.attrs).encode()})
            self._parquet = pq.ParquetWriter(self._out, schema)
            return
        self._delimiter = "\t" if self.fmt == "tsv" else ","
        # plain: the header is the first line; the attributes (provenance) go only to Parquet and HDF5
        head = (self._delimiter.join(_quote(n, self._delimiter) for n in table.names) + "\n").encode()
        self._out.write(head)

    def _finish_h5(self, failed: bool) -> None:
        if failed:
            self._out.close()
        else:
            _h5_image_to(self._out, self._tmp)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        late: BaseException | None = None
        try:
            self._wait()
        except BaseException as e:  # a failure in the writing thread fails the whole write
            late = e
        if self._pool is not None:
            self._pool.shutdown()
        try:
            if self._parquet is not None:
                self._parquet.close()  # the footer: a Parquet file is complete only now
            if self.path == "-":
                self._out.flush()
            elif self.fmt == "h5":
                self._finish_h5(failed=(exc or late) is not None)
            else:
                self._out.close()  # may fail too (a full disk shows at the last flush)
        except BaseException as e:
            late = late or e
        failure = exc or late
        if self.path != "-":
            self._atomic.__exit__(type(failure) if failure else None, failure, None)
        if late is not None and exc is None:
            if isinstance(late, OSError) and self.path == "-":
                from uiaa_cli.tables.outputs import WRITE_ERRNOS, write_error

                if late.errno in WRITE_ERRNOS:
                    raise write_error(late, self.path) from None
            raise late


def _h5_image_to(f: Any, path: Path) -> None:
    """Write an in-memory (core driver) HDF5 file's bytes to ``path`` and close it."""
    try:
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with open(path, "wb") as out:
        out.write(image)


def write_h5_group(f: Any, table: Table, group: str = TABLE_GROUP) -> None:
    """Store ``table`` as one dataset per column under ``group`` of an open h5py file."""
    append_h5_rows(create_h5_group(f, table, group), table)


def create_h5_group(f: Any, table: Table, group: str = TABLE_GROUP) -> Any:
    """An empty, growable dataset per column of ``table`` under ``group``, with its attributes."""
    import h5py

    if group in f:
        del f[group]
    g = f.create_group(group, track_order=True)
    g.attrs["columns"] = np.array(table.names, dtype=h5py.string_dtype())
    for key, value in table.attrs.items():
        g.attrs[key] = to_h5_attr(value)
    for name, values in table.columns.items():
        dtype = h5py.string_dtype() if values.dtype.kind in "USO" else values.dtype
        g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
    return g


def append_h5_rows(g: Any, table: Table) -> None:
    """Append the rows of ``table`` to a group made by :func:`create_h5_group`."""
    for name, values in table.columns.items():
        ds = g[name]
        start = ds.shape[0]
        ds.resize((start + len(values),))
        ds[start:] = values.astype(object) if values.dtype.kind in "US" else values


def to_h5_attr(value: Any) -> Any:
    """A JSON-able value as an HDF5 attribute; nested or mixed values are stored as ``json:...``."""
    if value is None or isinstance(value, dict) or (
        isinstance(value, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return "json:" + json.dumps(value)
    return value


def utf8(values: np.ndarray) -> np.ndarray:
    """A str array as UTF-8 bytes (``S`` dtype); ASCII, the usual case, takes numpy's fast cast."""
    try:
        return values.astype("S")
    except UnicodeEncodeError:
        return np.char.encode(values.astype(str), "utf-8")


def _string_array(values: np.ndarray) -> Any:
    """A str numpy array as an arrow string array, built from buffers (``pa.array`` imports pandas)."""
    import pyarrow as pa

    encoded = utf8(values)
    lengths = np.char.str_len(encoded).astype(np.int64)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(encoded.tolist())
    return pa.Array.from_buffers(pa.large_string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _numeric_array(values: np.ndarray) -> Any:
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        values = values.astype(np.int64, copy=False)
        return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])
    values = values.astype(np.float64, copy=False)
    return pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(values)])


def _needs_quotes(values: np.ndarray, delimiter: str) -> bool:
    return any(bool(np.any(np.char.find(values, ch) >= 0)) for ch in (delimiter, '"', "\n", "\r"))


def _quote(name: str, delimiter: str) -> str:
    if any(ch in name for ch in (delimiter, '"', "\n", "\r")):
        return '"' + name.replace('"', '""') + '"'
    return name


def arrow_table(table: Table, schema: Any = None) -> Any:
    """``table`` as an arrow table (strings UTF-8, integers int64, other numbers float64)."""
    import pyarrow as pa

    arrays = [_string_array(v.astype(str)) if v.dtype.kind in "USO" else _numeric_array(v)
              for v in table.columns.values()]
    if schema is not None:
        for array, want, name in zip(arrays, schema.types, table.names):
            if array.type != want:
                raise UiaaError(f"column {name!r} is {array.type} here and {want} in the rows before")
        return pa.Table.from_arrays(arrays, schema=schema)
    return pa.Table.from_arrays(arrays, names=table.names)


def write_rows(table: Table, out: Any, delimiter: str = ",") -> None:
    """The rows of ``table`` as CSV/TSV (no header): shortest exact floats, quotes only if needed."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrays, quote = [], False
    for values in table.columns.values():
        if values.dtype.kind in "USO":
            values = values.astype(str)
            quote = quote or _needs_quotes(values, delimiter)
            arrays.append(_string_array(values))
        else:
            arrays.append(_numeric_array(values))
    arrow = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
    options = pacsv.WriteOptions(include_header=False, delimiter=delimiter,
                                 quoting_style="needed" if quote else "none")
    pacsv.write_csv(arrow, out, options)
