"""uiaa tables: the ``Table`` type (one image per row, named columns, a few attributes), and reading
one from CSV, TSV, Parquet or HDF5.

A table is a dict of equal-length numpy columns plus ``attrs`` (kind, scale, parameters: the
provenance). CSV and TSV are plain (the header is the first line, so every CSV reader takes them
with default options) and carry no attributes: everything a command needs is in the column names.
Parquet keeps the attributes as schema metadata (key ``uiaa``, JSON), HDF5 as attributes of the
table's group (the formats in full: docs/formats.md). Files written by older versions with a
``# uiaa: {json}`` first line still read. Inputs are recognised by content first
(:mod:`uiaa_cli.tables.formats`), outputs by extension or ``--to`` (``table_format``); writing is
:mod:`uiaa_cli.tables.writers`.

Read with pyarrow's CSV engine, imported so as never to pull in pandas (``pa.array`` would),
keeping start-up fast.
"""

from __future__ import annotations

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
