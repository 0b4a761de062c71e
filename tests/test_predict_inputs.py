"""``uiaa predict`` at scale, through the real command: tar shards, tables of paths, --shard K/N,
--resume after kill -9, named pipes, names that need escaping. Tiny images, an untrained resnet18."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import make_checkpoint, make_photos

from uiaa_cli.tables.table import read_table


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("scale")
    ids = make_photos(root / "photos", n=6)
    return {"root": root, "photos": root / "photos", "ids": ids, "model": make_checkpoint(root / "m.pt"),
            "other": make_checkpoint(root / "other.pt", seed=1)}


def problems(stderr: bytes) -> list[str]:
    """stderr's lines, less the engine's one-time note on exporting the model for ONNX Runtime."""
    return [line for line in stderr.decode().splitlines() if not line.startswith("uiaa predict: exporting")]


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_shards_with_a_corrupt_member(made, uiaa, tmp_path):
    """Samples grouped by __key__ (folder kept, extensions dropped), the first image member used, other
    members ignored; a corrupt member is one stderr line naming shard and key; the run goes on, exit 1.
    The same bytes as files in a folder score the same."""
    folder = tmp_path / "same"
    folder.mkdir()
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for i, key in enumerate(["000000", "000001", "sub/000002"]):
            add(tar, f"{key}.json", json.dumps({"i": i}).encode())  # before the image: ignored
            add(tar, f"{key}.jpg", jpeg_bytes(i))
            add(tar, f"{key}.seg.png", b"not even a png")  # a second image member: ignored
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    with tarfile.open(tmp_path / "shard-001.tar", "w") as tar:
        add(tar, "000003.jpg", b"\xff\xd8\xff garbage, not a JPEG")
        add(tar, "000003.txt", b"caption")
        add(tar, "000004.jpg", jpeg_bytes(4))
        (folder / "4.jpg").write_bytes(jpeg_bytes(4))
    result = uiaa("predict", "shard-000.tar", "shard-001.tar", "same", "-m", made["model"], "-o", "out.parquet",
                  "--workers", "1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    errors = problems(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("uiaa predict: shard-001.tar: 000003: ")
    table = read_table(tmp_path / "out.parquet")
    assert table.names[:4] == ["image", "shard", "score", "std"]
    assert table.attrs["config"]["arch"] == "resnet18" and table.attrs["config"]["size"] == 32  # the model's
    assert list(table["image"]) == ["000000", "000001", "sub/000002", "000004"] + [f"same/{i}.jpg" for i in
                                                                                  (0, 1, 2, 4)]
    assert list(table["shard"]) == ["shard-000.tar"] * 3 + ["shard-001.tar"] + [""] * 4
    np.testing.assert_allclose(table["score"][:4], table["score"][4:], atol=1e-6)


def test_tables_of_paths_parquet_and_csv(made, uiaa, tmp_path):
    """A Parquet table with a `path` column (relative to its folder) and a CSV with a `file` column
    (absolute paths): every path scored, named as in the table, as the files themselves score."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(made["photos"].rglob("*.jpg"))
    relative = [str(f.relative_to(made["root"])) for f in files]
    pq.write_table(pa.table({"path": relative, "note": ["x"] * len(files)}), made["root"] / "paths.parquet")
    (tmp_path / "list.csv").write_text("file\n" + "".join(f"{f}\n" for f in files[:2]))
    result = uiaa("predict", made["root"] / "paths.parquet", tmp_path / "list.csv", *files[:2], "-m", made["model"],
                  "--workers", "0")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.decode().splitlines()]
    assert [name for name, _ in rows] == relative + [str(f) for f in files[:2]] * 2
    scores = {}
    for name, score in rows:
        scores.setdefault(Path(name).name, set()).add(score)
    assert all(len(s) == 1 for s in scores.values())  # each photo the same score however it was named


def test_shards_of_the_inputs_cover_them_exactly_once(made, uiaa, tmp_path):
    """--shard K/N for K = 0, 1: disjoint, and together every input exactly once (K modulo N)."""
    names = []
    for k in range(2):
        result = uiaa("predict", made["photos"], "-m", made["model"], "--shard", f"{k}/2", "-o", tmp_path / f"{k}.csv",
                      "--workers", "0")
        assert result.returncode == 0, result.stderr
        names.append(list(read_table(tmp_path / f"{k}.csv")["image"]))
    assert [len(n) for n in names] == [3, 3]
    everything = sorted(str(p) for p in made["photos"].rglob("*.jpg"))
    assert sorted(sum(names, [])) == everything
    assert names[1] == everything[1::2]  # job K takes the inputs at positions K modulo N
    bad = uiaa("predict", made["photos"], "-m", made["model"], "--shard", "2/2")
    assert bad.returncode == 2 and b"0 <= K < N" in bad.stderr


def test_resume_after_kill_9_gives_the_uninterrupted_table(made, uiaa, tmp_path):
    """kill -9 half way, then --resume: the same table as a run never stopped (no duplicates, no gaps,
    same order); while it runs nothing sits under the final name; other model or no --resume: exit 2.

    The paths come on stdin, so the run can be stopped at a known point: after the first half has
    been written to its pipe and committed, it waits for more, and is killed there."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(48):
        Image.fromarray(np.full((8, 8, 3), i * 5, dtype=np.uint8)).save(many / f"{i:04d}.png")
    paths = "".join(f"{many}/{i:04d}.png\n" for i in range(48)).encode()
    common = ["predict", "-", "--batch-size", "4", "--workers", "0", "-m", made["model"]]
    whole = uiaa(*common, "-o", tmp_path / "whole.csv", input=paths)
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "out.csv"
    manifest = Path(str(out) + ".partial") / "manifest.json"
    run = subprocess.Popen([sys.executable, "-m", "uiaa_cli", *map(str, common), "-o", str(out)],
                           env={**os.environ, "UIAA_COMMIT_SECONDS": "0"}, stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    run.stdin.write(paths[:len(paths) // 2])
    run.stdin.flush()
    deadline, done = time.monotonic() + 300, 0
    while time.monotonic() < deadline and run.poll() is None and done < 24:
        try:
            done = json.loads(manifest.read_text())["done"]
        except (OSError, ValueError):
            done = 0
        time.sleep(0.05)
    assert done == 24 and not out.exists()  # half committed; nothing incomplete under the final name
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=30) == -signal.SIGKILL

    again = uiaa(*common, "-o", out, input=paths)
    assert again.returncode == 2 and b"--resume" in again.stderr
    other = uiaa(*common[:-1], made["other"], "-o", out, "--resume", input=paths)
    assert other.returncode == 2 and b"another model" in other.stderr
    assert len(problems(other.stderr)) == 1
    resumed = uiaa(*common, "-o", out, "--resume", input=paths)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not manifest.parent.exists()


def test_a_full_disk_mid_run_is_one_line_and_resume_finishes_once_there_is_room(made, uiaa, tmp_path):
    """A tiny tmpfs fills up after a few committed parts: one line naming the file that could not be
    written (a part or the manifest), exit 2, no temporary file left, the committed parts kept; once
    the mount is made larger, --resume ends with the uninterrupted run's table. The same when the
    disk fills up at the end, as the parts are joined into the output."""
    from test_outputs import mounted_tmpfs

    many = tmp_path / "many"
    many.mkdir()
    for i in range(48):
        Image.fromarray(np.full((8, 8, 3), i * 5, dtype=np.uint8)).save(many / f"{i:04d}.png")
    common = ["predict", many, "--batch-size", "4", "--workers", "0", "-m", made["model"]]
    whole = uiaa(*common, "-o", tmp_path / "whole.csv")
    assert whole.returncode == 0, whole.stderr
    env = {"UIAA_COMMIT_SECONDS": "0"}  # a part per batch
    with mounted_tmpfs(tmp_path / "tiny", "size=16k") as tiny:
        full = uiaa(*common, "-o", tiny / "out.csv", env=env)
        assert full.returncode == 2
        (line,) = problems(full.stderr)
        assert line.startswith(f"uiaa predict: error: {tiny}/out.csv.partial/") and "No space left" in line
        assert line.split(".partial/")[1].split(":")[0] in {"manifest.json"} | {f"part-{i:06d}.npz" for i in range(12)}
        assert "--resume" in line
        kept = sorted(p.name for p in (tiny / "out.csv.partial").iterdir())
        assert kept[0] == "manifest.json" and all(n.startswith("part-") and n.endswith(".npz") for n in kept[1:])
        assert len(kept) > 1  # some parts were committed before the disk filled up
        assert not (tiny / "out.csv").exists()
        subprocess.run(["mount", "-o", "remount,size=10m", str(tiny)], check=True)
        resumed = uiaa(*common, "-o", tiny / "out.csv", "--resume", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert (tiny / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
        assert sorted(p.name for p in tiny.iterdir()) == ["out.csv"]
    # One part (a batch of 64): grown 4 KiB at a time, the mount first holds the part, not yet the CSV.
    with mounted_tmpfs(tmp_path / "small", "size=8k") as small:
        one_part, resume = [*common[:2], "--batch-size", "64", *common[4:], "-o", small / "out.csv"], []
        for size in range(8, 68, 4):
            subprocess.run(["mount", "-o", f"remount,size={size}k", str(small)], check=True)
            full = uiaa(*one_part, *resume)
            assert full.returncode == 2
            (line,) = problems(full.stderr)
            assert "No space left" in line and "--resume" in line
            if line.startswith(f"uiaa predict: error: {small}/out.csv: cannot write"):
                break
            resume = ["--resume"]
        else:
            raise AssertionError("the join never ran out of room")
        subprocess.run(["mount", "-o", "remount,size=10m", str(small)], check=True)
        resumed = uiaa(*common, "-o", small / "out.csv", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert (small / "out.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_named_pipes_are_skipped_and_names_escaped(made, uiaa, tmp_path):
    """A FIFO among the photos is skipped, one named directly is one stderr line (no hang); tabs,
    newlines and backslashes in names are escaped on stdout's one line per image."""
    folder = tmp_path / "odd"
    folder.mkdir()
    jpeg = (made["photos"] / "img01.jpg").read_bytes()
    for name in ("tab\there.jpg", "new\nline.jpg", "back\\slash.jpg"):
        (folder / name).write_bytes(jpeg)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(tmp_path / "direct.jpg")
    result = uiaa("predict", folder, tmp_path / "direct.jpg", "-m", made["model"], "--workers", "0", timeout=60)
    assert result.returncode == 1
    assert len(problems(result.stderr)) == 1 and "direct.jpg" in problems(result.stderr)[0]
    rows = [line.split("\t") for line in result.stdout.decode().splitlines()]
    assert sorted(name for name, _ in rows) == sorted(f"{folder}/{n}" for n in
                                                      ("tab\\there.jpg", "new\\nline.jpg", "back\\\\slash.jpg"))
    assert len({score for _, score in rows}) == 1


def test_a_name_that_is_not_utf8_is_escaped_in_tables_and_kept_raw_in_lines(made, uiaa, tmp_path):
    """A Latin-1 file name (bytes that are not UTF-8) is scored: lines on stdout carry its raw bytes,
    as ``find`` prints them, and such a name is read from stdin; a table, which holds UTF-8 text, has
    ``\\xe9`` for the byte 0xe9, and stderr says so once per name (a shard's name too, not once per
    sample). A failure names such a file with the same escape (stderr's backslash doubled, as for
    every name there), not Python's ``\\udce9``. Tables used to end the run with a traceback at the
    join. Every run has strict stdio, as under a desktop's en_US.UTF-8 (this VM's C.UTF-8 forgives)."""
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    folder = tmp_path / "latin1"
    folder.mkdir()
    jpeg = (made["photos"] / "img01.jpg").read_bytes()
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(latin1, "wb") as f:
        f.write(jpeg)
    (folder / "plain.jpg").write_bytes(jpeg)
    lines = uiaa("predict", folder, "-m", made["model"], "--workers", "0", env=strict)
    assert lines.returncode == 0, lines.stderr
    assert sorted(line.split(b"\t")[0] for line in lines.stdout.splitlines()) == \
        [os.fsencode(folder) + b"/caf\xe9.jpg", os.fsencode(folder) + b"/plain.jpg"]
    piped = uiaa("predict", "-", "-m", made["model"], "--workers", "0", input=latin1 + b"\n", env=strict)
    assert piped.returncode == 0 and piped.stdout.split(b"\t")[0] == latin1, piped.stderr
    for name in ("out.csv", "out.parquet", "out.h5"):
        result = uiaa("predict", folder, "-m", made["model"], "--workers", "0", "-o", tmp_path / name, env=strict)
        assert result.returncode == 0, result.stderr
        assert len(problems(result.stderr)) == 1 and "not UTF-8" in problems(result.stderr)[0]
        table = read_table(tmp_path / name)
        assert sorted(table["image"].tolist()) == [f"{folder}/caf\\xe9.jpg", f"{folder}/plain.jpg"]

    shard = os.path.join(os.fsencode(tmp_path), b"shard-\xe9.tar")
    with tarfile.open(shard, "w") as tar:
        for key in range(5):
            add(tar, f"{key:04d}.jpg", jpeg)
    result = uiaa("predict", os.fsdecode(shard), "-m", made["model"], "--workers", "0", "-o", tmp_path / "shard.csv",
                  env=strict)
    assert result.returncode == 0, result.stderr
    assert problems(result.stderr) == [f"uiaa predict: {tmp_path}/shard-\\\\xe9.tar: the shard's name is not UTF-8; "
                                       "the table holds it with \\xNN escapes"]
    assert set(read_table(tmp_path / "shard.csv")["shard"].tolist()) == {f"{tmp_path}/shard-\\xe9.tar"}

    with open(os.path.join(os.fsencode(folder), b"bad\xe9.jpg"), "wb") as f:
        f.write(b"not a picture")
    failed = uiaa("predict", folder, "-m", made["model"], "--workers", "0", env=strict)
    assert failed.returncode == 1
    assert [line.split(": ")[1] for line in problems(failed.stderr)] == [f"{folder}/bad\\\\xe9.jpg"]


def test_parts_round_trip_and_an_earlier_versions_parts_are_refused(tmp_path):
    """A part keeps every column exactly (odd names, NaN, int64 positions) and is a plain numpy
    archive (no pickles); a folder of Parquet parts from an earlier uiaa, or a part cut short, is one
    error, not a crash; a folder left by a run killed before its first manifest is started afresh."""
    import json

    from uiaa_cli.errors import UiaaError
    from uiaa_cli.tables import parts
    from uiaa_cli.tables.table import Table

    rows = Table({"_index": np.array([3, 2**40], dtype=np.int64), "image": np.array(["a\tb\nc", "é/ü\\x.jpg"]),
                  "score": np.array([np.nan, 1e-300]), "kind": np.array(["gauss-mv", "gauss-mv"])})
    partial = parts.PartialTable.start(tmp_path / "out.csv.partial", {"model": "m"}, resume=False)
    partial.append(rows)
    partial.commit(2, "h", 0)
    (back,) = list(partial.tables())
    assert back.names == rows.names
    for name in rows.names:
        np.testing.assert_array_equal(back[name], rows[name])
    with np.load(tmp_path / "out.csv.partial" / "part-000000.npz", allow_pickle=False) as archive:
        assert archive["names"].tolist() == rows.names

    old = tmp_path / "old.csv.partial"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "uiaa-predict-partial-1", "identity": {"model": "m"},
                                                   "parts": [{"file": "part-000000.parquet", "rows": 2}],
                                                   "done": 2, "names": "h", "failed": 0, "complete": False}))
    with pytest.raises(UiaaError, match="earlier uiaa"):
        parts.PartialTable.start(old, {"model": "m"}, resume=True)

    (tmp_path / "out.csv.partial" / "part-000000.npz").write_bytes(b"")  # cut short by a power cut
    with pytest.raises(UiaaError, match="a damaged part") as damaged:
        list(parts.PartialTable.start(tmp_path / "out.csv.partial", {"model": "m"}, resume=True).tables())
    assert "part-000000.npz" in str(damaged.value) and "\n" not in str(damaged.value)

    empty = tmp_path / "killed.csv.partial"  # killed between its mkdir and its first manifest
    empty.mkdir()
    (empty / ".manifest.json.k2x9_q1a.part").write_text("{")  # outputs.atomic_output's temporary
    for resume in (False, True):
        assert parts.PartialTable.start(empty, {"model": "m"}, resume=resume).done == 0


def test_join_merges_the_parts_of_several_ranks_in_input_order(tmp_path):
    """Rank r holds inputs r, r + 3, ... (some failed, so absent), committed in parts of random sizes;
    the join writes every row once, in input order, holding a part per rank at a time."""
    from uiaa_cli.tables import parts
    from uiaa_cli.tables.table import Table

    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(300, 250, replace=False))
    partials = []
    for rank in range(3):
        mine = kept[kept % 3 == rank]
        partial = parts.PartialTable.start(tmp_path / f"r{rank}", {"model": "m"}, resume=False)
        cuts = np.sort(rng.choice(np.arange(1, len(mine)), 4, replace=False))
        for chunk in np.split(mine, cuts):
            partial.append(Table({"_index": chunk, "image": np.array([f"i{i}" for i in chunk]),
                                  "score": chunk / 10.0}))
            partial.commit(int(chunk[-1]) + 1, "", 0)
        partials.append(partial)
    empty = Table({"_index": np.zeros(0, dtype=np.int64), "image": np.zeros(0, dtype=str), "score": np.zeros(0)})
    written = parts.join(partials, str(tmp_path / "all.csv"), None, {}, empty)
    table = read_table(tmp_path / "all.csv")
    assert written == 250 and list(table["image"]) == [f"i{i}" for i in kept]
    np.testing.assert_array_equal(table["score"], kept / 10.0)
