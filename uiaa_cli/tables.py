"""uiaa tables: one image per row, named columns, a few attributes; CSV, TSV or HDF5; stdin/stdout.

A table is a dict of equal-length numpy columns plus ``attrs`` (kind, scale, parameters). In CSV and
TSV the attributes travel as one leading comment line ``# uiaa: {json}`` (read with
``pandas.read_csv(f, comment="#")``); in HDF5 they are attributes of the table's group. Writing
goes to a temporary name that is renamed when complete, so a crash never leaves half a file.

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

FORMATS = ("csv", "tsv", "h5")
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
    """``csv``, ``tsv`` or ``h5`` from ``--format`` or the file's extension (``-``: csv)."""
    if fmt:
        fmt = fmt.lower().lstrip(".")
        fmt = {"hdf5": "h5", "tab": "tsv", "txt": "tsv"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise UiaaError(f"unknown format {fmt!r}; choose csv, tsv or h5")
        return fmt
    suffix = Path(str(path)).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    return "csv"


def is_hdf5(path: str | os.PathLike) -> bool:
    """True for a file that starts with the HDF5 signature."""
    if str(path) == "-":
        return False
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


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
    """Read a uiaa table (CSV/TSV by content or name, HDF5 by signature or name)."""
    path = str(path)
    if (fmt is None and is_hdf5(path)) or (fmt and table_format(path, fmt) == "h5"):
        return read_h5_table(path)
    if data is None:
        data = read_bytes(path)
    if fmt is None:
        fmt = table_format(path) if path != "-" else None
    return parse_delimited(data, path, delimiter=None if fmt is None else ("\t" if fmt == "tsv" else ","))


def sniff_delimiter(header: bytes) -> str:
    """Tab if the header line has tabs and no commas, else comma."""
    return "\t" if header.count(b"\t") > header.count(b",") else ","


def parse_delimited(data: bytes, path: str, delimiter: str | None = None) -> Table:
    """Parse CSV/TSV bytes with a header (and an optional ``# uiaa:`` line) into a Table."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    attrs: dict[str, Any] = {}
    skip = 0
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
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
            names = [str(n) for n in g.attrs.get("columns", list(g.keys()))]
            columns = {}
            for name in names:
                ds = g[name]
                if h5py.check_string_dtype(ds.dtype) is not None:
                    columns[name] = np.array(ds.asstr()[()], dtype=str)
                else:
                    columns[name] = ds[()]
            attrs = {k: from_h5_attr(v) for k, v in g.attrs.items() if k != "columns"}
    except FileNotFoundError:
        raise UiaaError("no such file", where=at(path)) from None
    except OSError as e:
        raise UiaaError(f"not a readable HDF5 file ({e})", where=at(path)) from None
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
    """Kept for callers of the old name: :func:`uiaa_cli.outputs.atomic_output`."""
    from uiaa_cli.outputs import atomic_output

    return atomic_output(path)


def write_table(table: Table, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write to ``path`` (``-``: stdout) as CSV, TSV or HDF5, atomically."""
    with TableWriter(path, fmt) as writer:
        writer.write(table)


class TableWriter:
    """Write a table in chunks of rows (memory stays flat), to a file atomically or to stdout.

    The first chunk fixes the columns and attributes. CSV/TSV chunks are formatted in a background
    thread (arrow releases the GIL), so the next chunk is computed while this one is written.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, group: str = TABLE_GROUP) -> None:
        self.path, self.fmt, self.group = str(path), table_format(path, fmt), group
        if self.fmt == "h5" and self.path == "-":
            raise UiaaError("HDF5 cannot go to stdout; give a file name with -o")
        self.rows = 0
        self._names: list[str] | None = None
        self._atomic: Any = None
        self._out: Any = None
        self._pending: Any = None
        self._pool: Any = None

    def __enter__(self) -> TableWriter:
        if self.path != "-":
            from uiaa_cli.outputs import atomic_output

            self._atomic = atomic_output(self.path, seekable=self.fmt == "h5")
            tmp = self._atomic.__enter__()
            if self.fmt == "h5":
                import h5py

                self._out = h5py.File(tmp, "w")
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
            append_h5_rows(self._out[self.group], table)
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
        self._delimiter = "\t" if self.fmt == "tsv" else ","
        head = b""
        if table.attrs:
            head += META_PREFIX + json.dumps(table.attrs, separators=(",", ":")).encode() + b"\n"
        head += (self._delimiter.join(_quote(n, self._delimiter) for n in table.names) + "\n").encode()
        self._out.write(head)

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
            if self.path == "-":
                self._out.flush()
            else:
                self._out.close()  # may fail too (a full disk shows at the last flush)
        except BaseException as e:
            late = late or e
        failure = exc or late
        if self.path != "-":
            self._atomic.__exit__(type(failure) if failure else None, failure, None)
        if late is not None and exc is None:
            if isinstance(late, OSError) and self.path == "-":
                from uiaa_cli.outputs import WRITE_ERRNOS, write_error

                if late.errno in WRITE_ERRNOS:
                    raise write_error(late, self.path) from None
            raise late


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
