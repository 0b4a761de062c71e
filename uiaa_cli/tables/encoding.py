"""A ``Table``'s columns as each output format holds them: HDF5 datasets and attributes (a group per
table, as in a uiaa table or cache), arrow arrays (for Parquet) and CSV/TSV rows (through arrow's
CSV writer: shortest exact floats, quotes only where needed). :mod:`uiaa_cli.tables.writers` uses
these; reading is :mod:`uiaa_cli.tables.table`.

Arrow arrays are built from numpy buffers: ``pa.array`` would import pandas (~0.3 s of start-up).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables.table import TABLE_GROUP, Table


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


def quote_name(name: str, delimiter: str) -> str:
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
