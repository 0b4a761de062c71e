"""Outputs never destroy what the user did not ask to replace, and every bad path is one line.

Through the real ``uiaa`` command: exit status 2, exactly one ``uiaa CMD: error:`` line naming the
file, no traceback, nothing destroyed, no temporary file left behind, no hang. As root (CI,
containers) permission bits do not stop writes, so read-only places are read-only tmpfs mounts and
a full disk is a tiny tmpfs; those tests are skipped only where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_uiaa

from uiaa_cli.tables.outputs import output_lock
from uiaa_cli.tables.table import Table, read_table
from uiaa_cli.tables.writers import write_table

AVA = "".join(f"{i} {950000 + i} {i % 3} 1 5 17 38 36 15 6 5 1 1 22 1396\n" for i in range(1, 41))
TIMEOUT = 60


def run(*args: object, input: bytes | None = None, cwd: Path | None = None, stdout: object = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command (60 s at most), with Pillow's resizer; through conftest.run_uiaa unless
    ``stdout`` is given (a full disk's file, a closed pipe)."""
    if stdout is None:
        return run_uiaa(*args, input=input, cwd=cwd, env={"UIAA_RESIZE": "pillow", **(env or {})}, timeout=TIMEOUT)
    return subprocess.run([sys.executable, "-m", "uiaa_cli", *map(str, args)], input=input, cwd=cwd,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "UIAA_RESIZE": "pillow", **(env or {})}, timeout=TIMEOUT)


def one_error(r: subprocess.CompletedProcess, command: str, names: str) -> str:
    """Exit 2 and stderr exactly one ``uiaa COMMAND: error:`` line that mentions ``names``."""
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"uiaa {command}: error: "), err
    assert names in lines[0], err
    return lines[0]


def listing(folder: Path) -> dict[str, bytes | str]:
    """Every entry of ``folder`` (hidden ones too) with its content, or where a link points."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.iterdir()):
        out[p.name] = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else \
            "special" if not p.is_file() else p.read_bytes()
    return out


@pytest.fixture
def ava(tmp_path: Path) -> Path:
    path = tmp_path / "AVA.txt"
    path.write_text(AVA)
    return path


@pytest.fixture
def labels_csv(tmp_path: Path, ava: Path) -> Path:
    r = run("labels", ava, "-o", tmp_path / "labels.csv")
    assert r.returncode == 0, r.stderr
    return tmp_path / "labels.csv"


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str) -> object:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ------------------------------------------------------------------------ written through


def test_fifo_is_written_through_to_its_reader(tmp_path: Path, ava: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = run("labels", ava, "-o", fifo, "-q")
    reader.join(TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert got and got[0] == run("labels", ava, "-q").stdout  # CSV, as on stdout
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AVA.txt", "fifo"]


def test_symlink_target_is_written_and_the_link_kept(tmp_path: Path, ava: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "real" / "target.csv")
    r = run("labels", ava, "-o", link, "-q")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "real" / "target.csv")
    assert (tmp_path / "real" / "target.csv").read_bytes() == run("labels", ava, "-q").stdout
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["target.csv"]


def device_node(path: Path, minor: int) -> Path:
    """A character device in a temporary folder: the tests never aim at /dev itself (1, 3 is the null
    device; 1, 7 the full one, where every write fails with ENOSPC)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("cannot make a device node here (not root?)")
    return path


@pytest.mark.parametrize("args", [["labels", "{ava}", "-o", "{null}"],
                                  ["labels", "{ava}", "-o", "{null}", "--to", "h5"],
                                  ["convert", "{ava_labels}", "{null}"]])
def test_a_null_device_stays_a_device(tmp_path: Path, ava: Path, labels_csv: Path, args: list[str]) -> None:
    null = device_node(tmp_path / "null", 3)
    r = run(*[a.format(ava=ava, ava_labels=labels_csv, null=null) for a in args], "-q")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AVA.txt", "labels.csv", "null"]  # no temporary left


# ------------------------------------------------------------------ refused before the work


def test_output_that_is_an_input_is_refused(tmp_path: Path, ava: Path, labels_csv: Path) -> None:
    before = listing(tmp_path)
    one_error(run("labels", ava, "-o", ava), "labels", str(ava))
    one_error(run("convert", labels_csv, labels_csv), "convert", str(labels_csv))
    (tmp_path / "alias.csv").symlink_to(labels_csv)  # the same file by another name
    one_error(run("convert", labels_csv, tmp_path / "alias.csv"), "convert", "alias.csv")
    preds = tmp_path / "p.csv"
    preds.write_text("image,score\n950001,5.5\n950002,6\n950003,4\n")
    one_error(run("evaluate", preds, labels_csv, "--plot", preds), "evaluate", str(preds))
    one_error(run("predict", labels_csv, "-o", labels_csv), "predict", str(labels_csv))
    one_error(run("cache", labels_csv, "-o", labels_csv), "cache", str(labels_csv))
    before["alias.csv"] = f"-> {labels_csv}"
    before["p.csv"] = preds.read_bytes()
    assert listing(tmp_path) == before


def test_folder_and_missing_parent(tmp_path: Path, ava: Path, labels_csv: Path) -> None:
    (tmp_path / "dir").mkdir()
    one_error(run("labels", ava, "-o", tmp_path / "dir"), "labels", "is a folder")
    one_error(run("convert", labels_csv, tmp_path / "nowhere" / "x.csv"), "convert", "nowhere")
    one_error(run("labels", ava, "-o", tmp_path / "nowhere" / "x.csv"), "labels", "no such folder")
    preds = tmp_path / "p.csv"
    preds.write_text("image,score\n950001,5.5\n950002,6\n950003,4\n")
    r = run("evaluate", preds, labels_csv, "--plot", tmp_path / "dir")
    one_error(r, "evaluate", "is a folder")
    assert r.stdout == b""  # refused before the metrics are printed
    assert not (tmp_path / "nowhere").exists() and listing(tmp_path / "dir") == {}


def test_read_only_place_is_one_line_before_the_work(tmp_path: Path, ava: Path, labels_csv: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        one_error(run("labels", ava, "-o", ro / "l.csv"), "labels", "l.csv")
        one_error(run("convert", labels_csv, ro / "l.parquet"), "convert", "l.parquet")
        preds = tmp_path / "p.csv"
        preds.write_text("image,score\n950001,5.5\n950002,6\n950003,4\n")
        r = run("evaluate", preds, labels_csv, "--plot", ro / "s.png")
        one_error(r, "evaluate", "s.png")
        assert r.stdout == b""
        one_error(run("cache", labels_csv, "-o", ro / "c.h5"), "cache", "c.h5")
        # train refuses before it loads data or builds a model (a missing input is refused even earlier)
        one_error(run("train", labels_csv, "--out", ro / "run"), "train", "run")
        one_error(run("train", tmp_path / "absent.csv", "--out", ro / "run"), "train", "absent.csv: no such file")
        assert listing(ro) == {}


def test_unknown_extensions_are_errors_or_honoured(tmp_path: Path, ava: Path, labels_csv: Path) -> None:
    one_error(run("labels", ava, "-o", tmp_path / "x.txt"), "labels", "x.txt")
    assert not (tmp_path / "x.txt").exists()
    r = run("labels", ava, "-o", tmp_path / "x.txt", "--to", "csv", "-q")  # --to says what it is
    assert r.returncode == 0 and (tmp_path / "x.txt").read_bytes().startswith(b"image,votes,")
    preds = tmp_path / "p.csv"
    preds.write_text("image,score\n950001,5.5\n950002,6\n950003,4\n")
    r = run("evaluate", preds, labels_csv, "--plot", tmp_path / "s.xyz")
    one_error(r, "evaluate", "s.xyz")
    assert r.stdout == b""
    r = run("evaluate", preds, labels_csv, "--plot", tmp_path / "s.jpg", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, as named


def test_stdout_and_cache_wording(tmp_path: Path, labels_csv: Path) -> None:
    line = one_error(run("cache", labels_csv, "-o", "-"), "cache", "<stdout>")
    assert "<stdin>" not in line
    line = one_error(run("convert", labels_csv, "-", "--to", "h5"), "convert", "<stdout>")
    assert "-o" not in line


def test_train_out_that_is_a_file(tmp_path: Path, labels_csv: Path) -> None:
    (tmp_path / "afile").write_text("keep me\n")
    one_error(run("train", labels_csv, "--out", tmp_path / "afile"), "train", "afile")
    assert (tmp_path / "afile").read_text() == "keep me\n"


# ------------------------------------------------------------------------------ full disks


@pytest.mark.parametrize("name", ["l.h5", "l.csv", "l.parquet"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    ava = tmp_path / "AVA.txt"
    counts = np.random.default_rng(0).integers(1, 60, (6000, 10))  # varied: Parquet compresses repeats away
    ava.write_text("".join(f"{i} {950000 + i} {' '.join(map(str, c))} 1 22 1396\n" for i, c in enumerate(counts)))
    with mounted_tmpfs(tmp_path / "tiny", "size=300k") as tiny:
        r = run("labels", ava, "-o", tiny / name)
        one_error(r, "labels", name)
        assert "No space left" in r.stderr.decode()
        assert listing(tiny) == {}


def test_stdout_on_a_full_disk(tmp_path: Path, ava: Path, labels_csv: Path) -> None:
    with open(device_node(tmp_path / "full", 7), "wb") as full:
        one_error(run("labels", ava, stdout=full), "labels", "<stdout>")
        preds = labels_csv.parent / "p.csv"
        preds.write_text("image,score\n950001,5.5\n950002,6\n950003,4\n")
        one_error(run("evaluate", preds, labels_csv, stdout=full), "evaluate", "<stdout>")
        one_error(run("convert", labels_csv, "-", stdout=full), "convert", "<stdout>")


# ----------------------------------------------------------------------------------- locks


def test_cache_reports_the_run_that_holds_the_lock(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "l.csv").write_text("image,mean,p_low,p_high\na.png,5,0.5,0.5\n")
    out = tmp_path / "c.h5"
    with output_lock(out):  # this process plays the first run, still building
        one_error(run("cache", tmp_path / "img" / "l.csv", "-o", out, "--size", "16"), "cache",
                  f"another uiaa run (pid {os.getpid()}) is writing")
    assert not out.exists() and not (tmp_path / "c.h5.partial").exists()
    r = run("cache", tmp_path / "img" / "l.csv", "-o", out, "--size", "16", "-q")  # released: it runs
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "img"]  # no lock file left


def test_a_second_train_on_the_same_out_is_refused(tmp_path: Path, labels_csv: Path) -> None:
    from PIL import Image

    labels = read_table(labels_csv)
    for name in labels["image"]:
        Image.new("RGB", (16, 16), (int(name) % 256, 0, 0)).save(tmp_path / f"{name}.png")
    args = [str(labels_csv), "--out", str(tmp_path / "run"), "--arch", "resnet18", "--weights", "none", "--size",
            "16", "--device", "cpu", "--workers", "0", "--epochs", "500", "--batch-size", "8"]
    first = subprocess.Popen([sys.executable, "-m", "uiaa_cli", "train", *args], stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr is not None
        for line in first.stderr:  # the first run has started training
            if "training and" in line:
                break
        second = run("train", *args)  # refused before it loads the data
        one_error(second, "train", f"another uiaa run (pid {first.pid}) is writing")
    finally:
        first.kill()
        first.wait(TIMEOUT)


# ------------------------------------------------------------------ inputs known by content


@pytest.mark.parametrize("content, words", [
    (gzip.compress(b"image,score\na,5\n", mtime=0), "gzip-compressed"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "l.csv"),
    (b"image,score\n\xff\xfeab,5\n", "l.csv:2: bytes that are not UTF-8"),
    (b"image,sc\xe9re\na,5\n", "l.csv:1: bytes that are not UTF-8"),
])
def test_binary_and_non_utf8_inputs(tmp_path: Path, content: bytes, words: str) -> None:
    for name in ("l.csv", "l.h5"):
        (tmp_path / name).write_bytes(content)
        for command in (["convert", tmp_path / name, tmp_path / "out.csv"], ["labels", tmp_path / name],
                        ["evaluate", tmp_path / name, tmp_path / name]):
            r = run(*command)
            one_error(r, str(command[0]), words.replace("l.csv", name))
            assert r.stdout == b""
    assert not (tmp_path / "out.csv").exists()


def test_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbfimage,score\na,5\n")
    assert read_table(tmp_path / "p.csv").names == ["image", "score"]


def test_malformed_hdf5_tables(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "lengths.h5", "w") as f:
        f["table/image"] = np.array([b"a", b"b"], dtype=object)
        f["table/score"] = np.array([1.0, 2.0, 3.0])
    with h5py.File(tmp_path / "listed.h5", "w") as f:
        g = f.create_group("table")
        g.attrs["columns"] = ["image", "score"]
        g["image"] = np.array([b"a"], dtype=object)
    with h5py.File(tmp_path / "nogroup.h5", "w") as f:
        f["other"] = np.arange(3)
    for name, words in (("lengths.h5", "different lengths"), ("listed.h5", "'score' is listed but missing"),
                        ("nogroup.h5", "no 'table' group")):
        one_error(run("convert", tmp_path / name, tmp_path / "out.csv"), "convert", f"{name}: ")
        assert words in run("convert", tmp_path / name, tmp_path / "out.csv").stderr.decode()
    assert not (tmp_path / "out.csv").exists()


def test_hdf5_tables_read_with_the_readme_recipe(tmp_path: Path) -> None:
    """The README's h5py + pandas snippet gives the same frame as the CSV."""
    import pandas as pd

    t = Table({"image": np.array(["a", "ü.jpg"]), "votes": np.array([3, 4]), "mean": np.array([5.5, 1 / 3])},
              {"kind": "rsd"})
    write_table(t, tmp_path / "labels.h5")
    write_table(t, tmp_path / "labels.csv")
    with h5py.File(tmp_path / "labels.h5") as f:  # the README's recipe, verbatim
        g = f["table"]
        df = pd.DataFrame({c: g[c].asstr()[()] if g[c].dtype.kind == "O" else g[c][()] for c in g.attrs["columns"]})
        attrs = dict(g.attrs)
    pd.testing.assert_frame_equal(df, pd.read_csv(tmp_path / "labels.csv"))
    assert attrs["kind"] == "rsd"


def test_labels_parquet_reads_in_pandas_with_metadata(tmp_path: Path, ava: Path) -> None:
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    r = run("labels", ava, "-o", tmp_path / "l.parquet", "--lam", "0.25", "-q")
    assert r.returncode == 0, r.stderr
    assert run("labels", ava, "-o", tmp_path / "l.csv", "--lam", "0.25", "-q").returncode == 0
    frame = pd.read_parquet(tmp_path / "l.parquet")
    csv = pd.read_csv(tmp_path / "l.csv")  # no options; AVA's ids are numbers to pandas
    assert list(frame["image"]) == [str(i) for i in csv["image"]]
    pd.testing.assert_frame_equal(frame.drop(columns="image"), csv.drop(columns="image"))
    meta = json.loads(pq.read_schema(tmp_path / "l.parquet").metadata[b"uiaa"])
    assert meta["kind"] == "gauss-mv" and meta["lam"] == 0.25


def test_convert_joins_parts_with_the_same_columns(tmp_path: Path, labels_csv: Path) -> None:
    t = read_table(labels_csv)
    write_table(t.take(np.arange(0, 15)), tmp_path / "a.parquet")
    write_table(t.take(np.arange(15, 30)), tmp_path / "b.csv")
    write_table(t.take(np.arange(30, len(t))), tmp_path / "c.h5")
    r = run("convert", tmp_path / "a.parquet", tmp_path / "b.csv", tmp_path / "c.h5", tmp_path / "all.csv", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "all.csv").read_bytes() == labels_csv.read_bytes()
    (tmp_path / "other.csv").write_text("image,score\na,1\n")
    one_error(run("convert", labels_csv, tmp_path / "other.csv", tmp_path / "x.parquet"), "convert", "other.csv")
    assert not (tmp_path / "x.parquet").exists()


def test_a_cache_is_never_renamed_onto_a_device_or_pipe(tmp_path: Path) -> None:
    """A cache is built beside its name and renamed at the end: onto a device or pipe that would replace
    it (``-o /dev/null.h5``-like names), so such an output is refused before any work."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "l.csv").write_text("image,mean,p_low,p_high\na.png,5,0.5,0.5\n")
    os.mkfifo(tmp_path / "pipe.h5")
    device_node(tmp_path / "null.h5", 3)
    for name in ("pipe.h5", "null.h5"):
        one_error(run("cache", tmp_path / "img" / "l.csv", "-o", tmp_path / name, "--size", "16"), "cache",
                  "must be a regular file")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.h5").st_mode)
    assert stat.S_ISCHR(os.stat(tmp_path / "null.h5").st_mode)
