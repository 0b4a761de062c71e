"""uiaa cache: build, bad images, exit codes, kill and --resume, the reader.

Most subprocess runs set UIAA_RESIZE=pillow to skip importing torch (1-4 s each on 2 busy cores);
the in-process builds and test_bad_images_are_skipped_with_one_line_each use the default (torch)
resizer, and test_images.py checks that the two agree within one grey level.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels.cache import CacheReader
from uiaa_cli.pixels.cache_build import build_cache
from uiaa_cli.pixels.cache_partial import partial_path
from uiaa_cli.pixels.images import decode_image
from uiaa_cli.tables.table import read_table

SIZE = 24
PILLOW = {"UIAA_RESIZE": "pillow"}


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` small random JPEG/PNG images named 0000.. (bare ids); returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 256, (rng.integers(20, 48), rng.integers(20, 48), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.{'png' if i % 3 == 0 else 'jpg'}")
        names.append(f"{i:04d}")
    return names


def write_labels(path: Path, names: list[str]) -> Path:
    lines = ["image,mean,p_low,p_high"] + [f"{n},{i % 10 + 0.5},{i % 7 / 7},{1 - i % 7 / 7}"
                                            for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")
    return path


def add_bad_images(folder: Path) -> list[str]:
    """One of each kind of bad image; returns their names as the labels give them."""
    good = folder / "0001.jpg"
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture")
    (folder.parent / "outside.jpg").write_bytes(data)
    (folder / "link.jpg").symlink_to(folder.parent / "outside.jpg")
    return ["truncated", "empty.jpg", "text", "missing", "../outside.jpg", "link", "/etc/hostname"]


def run_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command, in a subprocess (Pillow's resizer unless ``env`` says otherwise)."""
    return subprocess.run([sys.executable, "-m", "uiaa_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **PILLOW, **(env or {})}, timeout=120)


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def small(request, tmp_path_factory):
    """40 good images and their cache, built in-process, for each store."""
    tmp = tmp_path_factory.mktemp(f"small_{request.param}")
    names = make_images(tmp / "img", 40)
    labels = write_labels(tmp / "img" / "labels.csv", names)
    report = build_cache(labels, None, tmp / "c.h5", size=SIZE, workers=2, progress=False, store=request.param)
    return tmp, names, report


def jpeg_round_trip(pixels: np.ndarray, quality: int = 95) -> np.ndarray:
    """What a JPEG at ``quality`` without chroma subsampling gives back, by Pillow directly."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# ----------------------------------------------------------------------------- building


def test_cache_equals_decoding_directly(small):
    tmp, names, report = small
    assert (report.total, report.stored, report.skipped) == (40, 40, [])
    with CacheReader(tmp / "c.h5") as cache:
        assert len(cache) == 40 and cache.size == SIZE and report.store == str(cache.store)
        pixels = cache.read(np.arange(40))
        for i, name in enumerate(names):
            ext = "png" if i % 3 == 0 else "jpg"
            direct = decode_image(tmp / "img" / f"{name}.{ext}", SIZE)
            if cache.store.kind == "jpeg":
                direct = jpeg_round_trip(direct)
            np.testing.assert_array_equal(pixels[i], direct)
        labels = read_table(tmp / "img" / "labels.csv")
        for column in labels.names:
            np.testing.assert_array_equal(cache.table[column], labels[column])


def test_progress_bar_on_request(tmp_path, capfd):
    names = make_images(tmp_path, 20)
    labels = write_labels(tmp_path / "labels.csv", names)
    build_cache(labels, None, tmp_path / "c.h5", size=16, workers=1, progress=True)
    err = capfd.readouterr().err
    assert "images/s" in err and "20/20" in err
    build_cache(labels, None, tmp_path / "c.h5", size=16, workers=1, progress=None)  # stderr is no terminal
    assert capfd.readouterr().err == ""


def test_cache_layout(small):
    tmp, _, report = small
    with h5py.File(tmp / "c.h5", "r") as f:
        if report.store == "raw":
            ds = f["images"]
            assert ds.shape == (40, SIZE, SIZE, 3) and ds.dtype == np.uint8
            assert ds.chunks == (1, SIZE, SIZE, 3) and ds.compression is None
            assert set(f) == {"images", "table", "skipped"}  # the build's working datasets are gone
        else:
            encoded, offsets = f["encoded"][()], f["offsets"][()]
            assert encoded.dtype == np.uint8 and f["encoded"].chunks is None and offsets.shape == (41,)
            assert offsets[0] == 0 and offsets[-1] == len(encoded) and np.all(np.diff(offsets) > 0)
            assert f.attrs["store"] == "jpeg" and f.attrs["quality"] == 95
            for i in (0, 17, 39):  # each image is a complete JPEG file of SIZE x SIZE RGB pixels
                one = encoded[offsets[i]:offsets[i + 1]].tobytes()
                assert one[:2] == b"\xff\xd8" and one[-2:] == b"\xff\xd9"
                with Image.open(io.BytesIO(one)) as im:
                    assert im.format == "JPEG" and im.size == (SIZE, SIZE) and im.mode == "RGB"
            assert set(f) == {"encoded", "offsets", "table", "skipped"}
        assert f.attrs["complete"] and f.attrs["size"] == SIZE
        np.testing.assert_allclose(f.attrs["mean"], [0.485, 0.456, 0.406])
        np.testing.assert_allclose(f.attrs["std"], [0.229, 0.224, 0.225])
    assert not partial_path(tmp / "c.h5").exists() and not Path(f"{tmp / 'c.h5'}.compacting").exists()
    assert len(read_table(tmp / "c.h5")) == 40  # any table reader reads a cache's labels


def test_bad_images_are_skipped_with_one_line_each(tmp_path, monkeypatch):
    names = make_images(tmp_path / "img", 6)
    bad = add_bad_images(tmp_path / "img")
    labels = write_labels(tmp_path / "img" / "labels.csv", names[:3] + bad + names[3:])
    out = tmp_path / "c.h5"
    run = run_command("cache", str(labels), "-o", str(out), "--size", str(SIZE), "--workers", "2", "--store", "raw",
                      env={"UIAA_RESIZE": ""})
    assert run.returncode == 1, run.stderr
    skipped_lines = [line for line in run.stderr.splitlines() if line.startswith("uiaa cache: skipped ")]
    assert len(skipped_lines) == len(bad), run.stderr
    for name in bad:
        assert any(line.startswith(f"uiaa cache: skipped {name}: ") for line in skipped_lines)
    assert "7 skipped" in run.stderr and "Traceback" not in run.stderr
    with CacheReader(out) as cache:
        assert cache.table["image"].tolist() == names
        assert sorted(image for image, _ in cache.skipped) == sorted(bad)
        reasons = dict(cache.skipped)
        assert "truncated" in reasons["truncated"] and "empty" in reasons["empty.jpg"]
        assert "not an image" in reasons["text"] and "no such image" in reasons["missing"]
        assert "escapes" in reasons["../outside.jpg"] and "outside the image root" in reasons["link"]
        assert "absolute" in reasons["/etc/hostname"]
        monkeypatch.setenv("UIAA_RESIZE", "pillow")  # as the command resizes, though this process has torch
        np.testing.assert_array_equal(cache.read([3])[0], decode_image(tmp_path / "img" / "0003.png", SIZE))
    converted = run_command("convert", str(out), str(tmp_path / "kept.csv"))
    assert converted.returncode == 0 and len(read_table(tmp_path / "kept.csv")) == 6


def test_images_root_default_is_the_labels_folder(tmp_path):
    names = make_images(tmp_path / "photos", 3)
    labels = write_labels(tmp_path / "labels.csv", names)
    with pytest.raises(UiaaError, match="none of the 3 images"):  # no image in the labels' own folder
        build_cache(labels, None, tmp_path / "a.h5", size=16, progress=False, log=lambda line: None)
    assert not (tmp_path / "a.h5").exists()
    report = build_cache(labels, tmp_path / "photos", tmp_path / "b.h5", size=16, progress=False)
    assert report.stored == 3 and not report.skipped


@pytest.mark.parametrize("case, message", [
    ("missing labels", "no such file"),
    ("no image column", "no 'image' column"),
    ("empty labels", "empty"),
    ("no such folder", "no such folder"),
    ("bad size", "--size"),
    ("bad workers", "--workers"),
    ("not h5", ".h5"),
    ("output folder missing", "no such folder for the cache"),
    ("output under a file", "no such folder for the cache"),
    ("output is a folder", "is a folder"),
])
def test_usage_and_input_errors(tmp_path, case, message):
    names = make_images(tmp_path, 1)
    labels = write_labels(tmp_path / "labels.csv", names)
    kw = {"labels_path": labels, "images_root": None, "out_path": tmp_path / "c.h5", "progress": False}
    if case == "missing labels":
        kw["labels_path"] = tmp_path / "nope.csv"
    elif case == "no image column":
        labels.write_text("name,mean\n0000,5\n")
    elif case == "empty labels":
        labels.write_text("image,mean\n")
    elif case == "no such folder":
        kw["images_root"] = tmp_path / "nope"
    elif case == "bad size":
        kw["size"] = 0
    elif case == "bad workers":
        kw["workers"] = 0
    elif case == "not h5":
        kw["out_path"] = tmp_path / "c.csv"
    elif case == "output folder missing":
        kw["out_path"] = tmp_path / "nope" / "c.h5"
    elif case == "output under a file":
        kw["out_path"] = labels / "c.h5"
    elif case == "output is a folder":
        (tmp_path / "c.h5").mkdir()
    with pytest.raises(UiaaError, match=message) as e:
        build_cache(**kw)
    assert e.value.status == 2
    assert not (tmp_path / "c.h5").is_file() and not partial_path(tmp_path / "c.h5").exists()
    assert not (tmp_path / "nope").exists()


def test_command_usage_errors_exit_2(tmp_path):
    names = make_images(tmp_path, 1)
    labels = write_labels(tmp_path / "labels.csv", names)
    (tmp_path / "noimage.csv").write_text("name,mean\n0000,5\n")
    for args, words in (
        ([str(tmp_path / "nope.csv"), "-o", str(tmp_path / "c.h5")], "nope.csv: no such file"),
        ([str(tmp_path / "noimage.csv"), "-o", str(tmp_path / "c.h5")], "noimage.csv: no 'image' column"),
        ([str(labels), "-o", str(tmp_path / "missing" / "c.h5")], "missing: no such folder for the cache"),
    ):
        run = run_command("cache", *args)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("uiaa cache: error:") and words in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and not run.stdout, run.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "c.h5").exists()
    run = run_command("cache", str(tmp_path / "nope.csv"))  # no -o
    assert run.returncode == 2 and "--output" in run.stderr


# ----------------------------------------------------------------------------- kill and resume

WRAPPER = textwrap.dedent("""
    # Runs the real uiaa command, counting (and optionally slowing) every successful decode.
    import os, sys, time
    from uiaa_cli.pixels import images

    decode = images.decode_image

    def counted(source, size):
        out = decode(source, size)
        time.sleep(float(os.environ.get("DECODE_DELAY", "0")))
        with open(os.environ["DECODE_LOG"], "a") as f:
            f.write(os.path.splitext(os.path.basename(str(source)))[0] + "\\n")
        return out

    images.decode_image = counted
    from uiaa_cli.cli.app import main
    sys.argv = ["uiaa"] + sys.argv[1:]
    main()
""")


def read_log(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def h5_contents(path: Path) -> dict[str, object]:
    """Every dataset's bytes and every attribute of an HDF5 file, by name."""
    found: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = (obj.dtype.str, obj.shape, obj[()].tobytes() if obj.dtype.kind != "O"
                               else [bytes(v) if isinstance(v, bytes) else v for v in obj[()].tolist()])
            for key, value in obj.attrs.items():
                found[f"{name}@{key}"] = np.asarray(value).tolist()

        visit("", f)
        f.visititems(visit)
    return found


@pytest.mark.parametrize("store", ["raw", "jpeg", "png"])
def test_kill_then_resume_equals_an_uninterrupted_build(tmp_path, store):
    n = 300
    names = make_images(tmp_path / "img", n)
    (tmp_path / "img" / "bad.jpg").write_text("not a picture")
    names.insert(10, "bad")  # a skip the interrupted run records and the resumed one keeps
    labels = write_labels(tmp_path / "labels.csv", names)
    wrapper = tmp_path / "counted_uiaa.py"
    wrapper.write_text(WRAPPER)
    args = ["cache", str(labels), "--images", str(tmp_path / "img"), "--size", str(SIZE), "--workers", "1",
            "--store", store]

    reference = run_command(*args, "-o", str(tmp_path / "ref.h5"))
    assert reference.returncode == 1, reference.stderr

    out, log1, log2 = tmp_path / "out.h5", tmp_path / "run1.log", tmp_path / "run2.log"
    proc = subprocess.Popen([sys.executable, str(wrapper), *args, "-o", str(out)], stderr=subprocess.PIPE,
                            env={**os.environ, **PILLOW, "DECODE_LOG": str(log1), "DECODE_DELAY": "0.01"})
    deadline = time.monotonic() + 60
    while len(read_log(log1)) < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    proc.stderr.close()
    decoded_before_kill = len(read_log(log1))
    assert 100 <= decoded_before_kill < n, "the build was not killed mid-way"
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(UiaaError, match="no such file"):
        CacheReader(out)
    with pytest.raises(UiaaError, match="not a finished uiaa cache"):
        CacheReader(partial_path(out))

    again = run_command(*args, "-o", str(out))  # without --resume: refused, the partial build is kept
    assert again.returncode == 2 and "--resume" in again.stderr and partial_path(out).exists()

    resumed = subprocess.run([sys.executable, str(wrapper), *args, "-o", str(out), "--resume"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, **PILLOW, "DECODE_LOG": str(log2)})
    assert resumed.returncode == 1, resumed.stderr  # the bad image is still reported
    assert "uiaa cache: skipped bad: not an image" in resumed.stderr
    carried = int(resumed.stderr.split(" carried over")[0].rsplit("; ", 1)[1].replace(",", ""))
    assert 0 < carried <= decoded_before_kill
    good = [name for name in names if name != "bad"]
    # Finished images were not decoded again: the resumed run did exactly the rest, in order.
    assert read_log(log2) == good[carried:]
    assert not partial_path(out).exists()

    with CacheReader(tmp_path / "ref.h5") as ref, CacheReader(out) as got:
        assert len(got) == len(ref) == n
        np.testing.assert_array_equal(got.read(np.arange(n)), ref.read(np.arange(n)))
        for column in ref.table.names:
            np.testing.assert_array_equal(got.table[column], ref.table[column])
        assert got.skipped == ref.skipped == [("bad", "not an image (or a format Pillow cannot read)")]
        assert str(got.store) == {"jpeg": "jpeg:95"}.get(store, store)
    # Byte for byte: every dataset and attribute (a build records no time or process of its own).
    reference, resumed_contents = h5_contents(tmp_path / "ref.h5"), h5_contents(out)
    assert reference.keys() == resumed_contents.keys()
    for key in reference:
        assert reference[key] == resumed_contents[key], key


def test_ctrl_c_keeps_the_partial_build(tmp_path):
    names = make_images(tmp_path / "img", 200)
    labels = write_labels(tmp_path / "img" / "labels.csv", names)
    wrapper = tmp_path / "counted_uiaa.py"
    wrapper.write_text(WRAPPER)
    log, out = tmp_path / "run.log", tmp_path / "out.h5"
    proc = subprocess.Popen([sys.executable, str(wrapper), "cache", str(labels), "-o", str(out), "--size",
                             str(SIZE), "--workers", "1"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **PILLOW, "DECODE_LOG": str(log), "DECODE_DELAY": "0.01"})
    deadline = time.monotonic() + 60
    while len(read_log(log)) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists() and partial_path(out).exists()
    resumed = run_command("cache", str(labels), "-o", str(out), "--size", str(SIZE), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "carried over" in resumed.stderr
    with CacheReader(out) as cache:
        assert cache.table["image"].tolist() == names


def test_a_dying_worker_is_an_error_not_a_hang(tmp_path, monkeypatch):
    from uiaa_cli.pixels import images

    names = make_images(tmp_path / "img", 40)
    labels = write_labels(tmp_path / "img" / "labels.csv", names)
    decode = images.decode_image

    def crashing(source, size):  # as a decoder crashing on one image (the workers are forked)
        if Path(source).stem == "0035":
            os._exit(1)
        return decode(source, size)

    monkeypatch.setattr(images, "decode_image", crashing)
    out = tmp_path / "c.h5"
    with pytest.raises(UiaaError, match="decoding process died.*--resume"):
        build_cache(labels, None, out, size=SIZE, workers=1, progress=False)
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(images, "decode_image", decode)
    report = build_cache(labels, None, out, size=SIZE, workers=1, resume=True, progress=False)
    # The batches finished before the crash were kept and not decoded again.
    assert 16 <= report.carried <= 35 and report.stored == 40 and report.decoded == 40 - report.carried


def test_resume_of_a_finished_cache_redoes_nothing(tmp_path):
    names = make_images(tmp_path / "img", 5)
    labels = write_labels(tmp_path / "labels.csv", names)
    out = tmp_path / "c.h5"
    kw = {"images_root": tmp_path / "img", "size": SIZE, "workers": 1, "progress": False}
    first = build_cache(labels, out_path=out, **kw)
    assert first.stored == 5 and not first.complete_already
    stamp = out.stat().st_mtime_ns
    again = build_cache(labels, out_path=out, resume=True, **kw)
    assert again.complete_already and again.stored == 5 and again.decoded == 0 and not again.skipped
    assert out.stat().st_mtime_ns == stamp
    run = run_command("cache", str(labels), "--images", str(tmp_path / "img"), "-o", str(out), "--size", str(SIZE),
                      "--resume")
    assert run.returncode == 0 and "already complete" in run.stderr and "nothing to do" in run.stderr, run.stderr
    other_store = build_cache(labels, out_path=out, resume=True, store="raw", **kw)  # pixels kept otherwise
    assert not other_store.complete_already and other_store.decoded == 5 and CacheReader(out).store.kind == "raw"
    # New targets for the same images: the cache must carry them, so it is built again.
    labels.write_text(labels.read_text().replace(",0.5,", ",9.5,"))
    changed = build_cache(labels, out_path=out, resume=True, **kw)
    assert not changed.complete_already and changed.decoded == 5
    assert read_table(out)["mean"][0] == 9.5


def test_resume_refuses_a_different_build(tmp_path):
    names = make_images(tmp_path / "img", 3)
    labels = write_labels(tmp_path / "img" / "labels.csv", names)
    out = tmp_path / "c.h5"
    partial = partial_path(out)
    with pytest.raises(UiaaError, match="add --resume"):
        partial.write_bytes(b"")
        build_cache(labels, None, out, size=SIZE, progress=False)
    partial.write_bytes(b"not hdf5" * 100)
    with pytest.raises(UiaaError, match="cannot be read"):
        build_cache(labels, None, out, size=SIZE, resume=True, progress=False)
    partial.unlink()
    # A real partial build of size 16 cannot be resumed at another size.
    from uiaa_cli.pixels.cache_build import _fingerprint
    from uiaa_cli.pixels.cache_partial import PartialCache as _PartialCache
    from uiaa_cli.pixels.cache_store import parse_store

    jpeg = parse_store("jpeg")
    _PartialCache.create(partial, 3, 16, _fingerprint(np.array(names), 16, os.path.realpath(labels.parent), jpeg),
                         jpeg).close()
    with pytest.raises(UiaaError, match="other labels, images, --size or --store"):
        build_cache(labels, None, out, size=SIZE, resume=True, progress=False)
    with pytest.raises(UiaaError, match="other labels, images, --size or --store"):  # a jpeg build is not raw
        build_cache(labels, None, out, size=16, resume=True, progress=False, store="raw")
    report = build_cache(labels, None, out, size=16, resume=True, progress=False, store="jpeg:95")
    assert report.stored == 3 and report.carried == 0 and out.exists() and not partial.exists()


# ----------------------------------------------------------------------------- reading


def test_read_any_order_with_repeats(small):
    tmp, _, _ = small
    with CacheReader(tmp / "c.h5") as cache:
        everything = cache.read(np.arange(len(cache)))
        for indices in ([5, 3, 4, 39, 0, 0], [7, 8, 9, 10], [10, 9, 8], [-1, 2], [], list(range(40))[::-1]):
            batch = cache.read(np.array(indices, dtype=np.int64))
            assert batch.shape == (len(indices), SIZE, SIZE, 3) and batch.dtype == np.uint8
            np.testing.assert_array_equal(batch, everything[np.array(indices, dtype=np.int64)])
        with pytest.raises(IndexError):
            cache.read([40])


def test_iter_batches_sequential_and_shuffled(small):
    tmp, _, _ = small
    with CacheReader(tmp / "c.h5") as cache:
        everything = cache.read(np.arange(40))
        sequential = list(cache.iter_batches(16))
        assert [len(i) for i, _ in sequential] == [16, 16, 8]
        np.testing.assert_array_equal(np.concatenate([i for i, _ in sequential]), np.arange(40))
        shuffled = list(cache.iter_batches(16, shuffle=True, seed=3))
        order = np.concatenate([i for i, _ in shuffled])
        assert sorted(order.tolist()) == list(range(40)) and order.tolist() != list(range(40))
        for indices, batch in shuffled:
            np.testing.assert_array_equal(batch, everything[indices])
        again = np.concatenate([i for i, _ in cache.iter_batches(16, shuffle=True, seed=3)])
        other = np.concatenate([i for i, _ in cache.iter_batches(16, shuffle=True, seed=4)])
        np.testing.assert_array_equal(order, again)
        assert order.tolist() != other.tolist()


def test_reader_survives_pickling_into_another_process(small):
    import multiprocessing as mp
    import pickle

    tmp, _, _ = small
    with CacheReader(tmp / "c.h5") as cache:
        cache.read([0])  # the file is open in this process
        with mp.get_context("spawn").Pool(1) as pool:
            sums = pool.map(_batch_sum, [pickle.dumps(cache)])
        assert sums == [int(cache.read([1, 2]).sum())]


def test_reader_open_before_fork(small):
    """As in DataLoader workers: the reader is opened in the parent, then the process forks."""
    import multiprocessing as mp

    tmp, _, _ = small
    with CacheReader(tmp / "c.h5") as cache:
        expected = cache.read(np.arange(40))
        global _FORKED
        _FORKED = cache
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(_read_forked, [[0, 1], [39, 5], [7]])
    for indices, batch in zip([[0, 1], [39, 5], [7]], got):
        np.testing.assert_array_equal(batch, expected[indices])


_FORKED: CacheReader | None = None


def _read_forked(indices: list[int]) -> np.ndarray:
    return _FORKED.read(indices)


def _batch_sum(blob: bytes) -> int:
    import pickle

    return int(pickle.loads(blob).read([1, 2]).sum())


def test_reader_refuses_other_files(tmp_path):
    (tmp_path / "t.csv").write_text("image,mean\na,1\n")
    with pytest.raises(UiaaError, match="not a readable HDF5"):
        CacheReader(tmp_path / "t.csv")
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(UiaaError, match="not a finished uiaa cache"):
        CacheReader(tmp_path / "t.h5")


def test_cache_never_imports_torch(tmp_path, no_torch, torch_attempts):
    """SPEC §2: cache starts light. No process of the build (main or workers) even tries torch."""
    names = make_images(tmp_path / "img", 5)
    labels = write_labels(tmp_path / "img" / "labels.csv", names)
    run = run_command("cache", str(labels), "-o", str(tmp_path / "c.h5"), "--size", str(SIZE), "--workers", "2",
                      env={**no_torch, "UIAA_RESIZE": ""})
    assert run.returncode == 0, run.stderr
    assert torch_attempts() == 0
    with CacheReader(tmp_path / "c.h5") as cache:
        assert len(cache) == 5
    # and the fake torch does record attempts (the check above can fail)
    subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **no_torch}, capture_output=True)
    assert torch_attempts() == 1
