"""Tables: lossless CSV <-> TSV <-> HDF5 through ``uiaa convert``, stdin/stdout, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from uiaa_cli.errors import UiaaError
from uiaa_cli.tables import writers as tables
from uiaa_cli.tables.table import Table, read_table
from uiaa_cli.tables.writers import write_table


def awkward_table() -> Table:
    rng = np.random.default_rng(0)
    n = 50
    return Table({
        "image": np.array([f"00{i}" for i in range(n - 3)] + ['a,b.jpg', 'say "hi".png', "ünïcode/ø.jpg"]),
        "votes": rng.integers(1, 500, n),
        "mean": rng.random(n) * 10,
        "std": np.where(np.arange(n) % 7 == 0, 0.0, rng.random(n)),
        "1": np.r_[1e-300, 1 / 3, np.zeros(n - 2)],
        "p_1": rng.random(n) ** 8,
    }, {"uiaa": "labels", "kind": "gauss-mv", "bins": [1.0, 2.0], "lam": 0.5, "divisor": "2var"})


def assert_tables_equal(a: Table, b: Table, attrs: bool = True) -> None:
    assert a.names == b.names
    if attrs:
        assert a.attrs == b.attrs
    for name in a.names:
        assert a[name].dtype.kind == b[name].dtype.kind, name
        np.testing.assert_array_equal(a[name], b[name])


def test_round_trip_through_every_format(uiaa, tmp_path):
    original = awkward_table()
    write_table(original, tmp_path / "t.parquet")
    steps = ["t.h5", "u.parquet", "t.csv", "t.tsv", "u.h5", "v.parquet", "u.csv", "u.tsv", "v.csv"]
    previous, through_text = tmp_path / "t.parquet", False
    for name in steps:
        r = uiaa("convert", previous, tmp_path / name)
        assert r.returncode == 0, r.stderr
        back = read_table(tmp_path / name)
        # CSV and TSV carry no attributes: the provenance lives in Parquet and HDF5 only
        through_text = through_text or name.endswith((".csv", ".tsv"))
        assert_tables_equal(back, original, attrs=not through_text)
        assert back.attrs == ({} if through_text else original.attrs)
        previous = tmp_path / name
    assert (tmp_path / "t.parquet").read_bytes() == (tmp_path / "u.parquet").read_bytes()
    assert (tmp_path / "t.csv").read_bytes() == (tmp_path / "u.csv").read_bytes() == (tmp_path / "v.csv").read_bytes()
    assert (tmp_path / "t.tsv").read_bytes() == (tmp_path / "u.tsv").read_bytes()


def test_parquet_h5_parquet_is_identical_with_metadata(uiaa, tmp_path):
    import pyarrow.parquet as pq

    write_table(awkward_table(), tmp_path / "a.parquet")
    assert uiaa("convert", tmp_path / "a.parquet", tmp_path / "b.h5").returncode == 0
    assert uiaa("convert", tmp_path / "b.h5", tmp_path / "c.parquet").returncode == 0
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "c.parquet").read_bytes()
    meta = json.loads(pq.read_schema(tmp_path / "c.parquet").metadata[b"uiaa"])
    assert meta == awkward_table().attrs


def test_csv_is_plain_and_reads_with_default_options(tmp_path):
    import csv

    import pandas as pd

    t = awkward_table()
    write_table(t, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes().startswith(b"image,votes,mean,std,1,p_1\n")
    frame = pd.read_csv(tmp_path / "t.csv", dtype={"image": str})
    assert list(frame.columns) == t.names and len(frame) == len(t)
    assert list(frame["image"]) == list(t["image"])
    np.testing.assert_array_equal(frame["mean"].to_numpy(), t["mean"])
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == list(t["image"]) and float(rows[5]["p_1"]) == t["p_1"][5]


def test_old_attribute_line_still_reads(tmp_path):
    (tmp_path / "old.csv").write_text('# uiaa: {"kind":"binary","threshold":6.0}\nimage,p_low,p_high\na,1,0\n')
    t = read_table(tmp_path / "old.csv")
    assert t.attrs == {"kind": "binary", "threshold": 6.0} and t.names == ["image", "p_low", "p_high"]


def test_parquet_streams_in_row_groups(tmp_path):
    import pyarrow.parquet as pq

    t = awkward_table()
    with tables.TableWriter(tmp_path / "s.parquet") as w:
        for start in range(0, len(t), 20):
            w.write(t.take(np.arange(start, min(start + 20, len(t)))))
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_row_groups == 3
    assert_tables_equal(read_table(tmp_path / "s.parquet"), t)


def test_leading_zero_ids_stay_text_and_floats_are_exact(tmp_path):
    t = awkward_table()
    write_table(t, tmp_path / "t.csv")
    back = read_table(tmp_path / "t.csv")
    assert back["image"][0] == "000"
    assert back["1"][1] == 1 / 3 and back["1"][0] == 1e-300


def test_stdin_stdout_and_format_option(uiaa, tmp_path):
    write_table(awkward_table(), tmp_path / "t.csv")
    r = uiaa("convert", "-", "-", "--to", "tsv", input=(tmp_path / "t.csv").read_bytes())
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    assert header == b"image\tvotes\tmean\tstd\t1\tp_1"
    assert uiaa("convert", tmp_path / "t.csv", "-", "--to", "h5").returncode == 2


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    write_table(awkward_table(), tmp_path / "t.csv")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_plain_csv_without_attributes(tmp_path):
    (tmp_path / "p.csv").write_text("image,score\n1,5\n2,6.5\n")
    t = read_table(tmp_path / "p.csv")
    assert t.attrs == {} and list(t["image"]) == ["1", "2"]
    write_table(t, tmp_path / "q.csv")
    assert (tmp_path / "q.csv").read_text() == "image,score\n1,5\n2,6.5\n"


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "keep.csv"
    target.write_text("precious\n")

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tables, "write_rows", explode)
    with pytest.raises(RuntimeError):
        write_table(awkward_table(), target)
    assert target.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


@pytest.mark.parametrize("content, message", [
    (b"", "empty input"),
    (b"image,score\n1,2,3\n", ":2: expected 2 columns, found 3"),
    (b"image,score,score\n1,2,3\n", "duplicate column names"),
    (b"# uiaa: {not json\nimage\n", ":1: unreadable '# uiaa:' attribute line"),
])
def test_bad_tables(tmp_path, content, message):
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(UiaaError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_table(tmp_path / "bad.csv")
    assert "bad.csv" in str(e.value)


def test_bad_hdf5_and_missing_files(uiaa, tmp_path):
    (tmp_path / "fake.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    r = uiaa("convert", tmp_path / "fake.h5", tmp_path / "out.csv")
    assert r.returncode == 2 and "fake.h5" in r.stderr.decode() and b"Traceback" not in r.stderr
    r = uiaa("convert", tmp_path / "nothere.csv", tmp_path / "out.csv")
    assert r.returncode == 2 and "no such file" in r.stderr.decode()
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("kind, read_as", [("binary", "binary"), ("soft", "soft"), ("rsd", "rsd"),
                                           ("gauss-nv", "gauss-nv"), ("gauss-mv", "gauss-mv")])
def test_kind_from_a_plain_csv_and_from_metadata(tmp_path, kind, read_as):
    from uiaa_cli.targets.labels import LabelSettings, build_labels, table_bins, table_kind, table_threshold

    counts = np.array([[0, 1, 5, 17, 38, 36, 15, 6, 5, 1], [10, 7, 15, 26, 26, 21, 10, 8, 1, 2],
                       [0, 0, 0, 0, 0, 0, 0, 0, 3, 9], [4, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    table, _ = build_labels(np.array(["a", "b", "c", "d"]), counts, np.arange(1, 11), LabelSettings(kind))
    write_table(table, tmp_path / "l.csv")
    write_table(table, tmp_path / "l.parquet")
    plain = read_table(tmp_path / "l.csv")
    assert plain.attrs == {} and table_kind(plain) == read_as
    np.testing.assert_array_equal(table_bins(plain), np.arange(1, 11))
    assert table_threshold(plain, table_bins(plain)) == 5
    assert table_kind(read_table(tmp_path / "l.parquet")) == kind
