"""``uiaa cache --store raw|jpeg[:Q]|png`` and ``--info``, and train / predict reading every store.

Kill -9 and --resume for each store is in test_cache.py (test_kill_then_resume_equals_an_uninterrupted_build).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from uiaa_cli.pixels.cache import CacheReader

REPO = Path(__file__).resolve().parents[1]

SIZE = 32
PILLOW = {"UIAA_RESIZE": "pillow"}  # no torch import in the cache builds (see test_cache.py)


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` smooth 48x40 PNGs (gradients, an edge, mild noise) and ``uiaa labels`` of random votes."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:40, 0:48] / 40.0
    names = []
    for i in range(n):
        base = rng.uniform(40, 200, 3) + 50 * np.stack([x, y, x * y], -1) * rng.uniform(-1, 1, 3)
        base[:, 24 + i % 10:] += 40  # a sharp vertical edge
        pixels = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i:03d}.png")
        names.append(f"img/{i:03d}.png")
    counts = rng.integers(0, 10, (n, 10))
    counts[:, 4] += 1
    lines = ["image," + ",".join(str(b) for b in range(1, 11))]
    lines += [name + "," + ",".join(map(str, c)) for name, c in zip(names, counts, strict=True)]
    (folder / "counts.csv").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "uiaa_cli", "labels", str(folder / "counts.csv"), "-o",
                           str(folder / "labels.csv")], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    """24 photos cached at 32 px in every store (the real command)."""
    tmp = tmp_path_factory.mktemp("stores")
    labels = make_photos(tmp, 24)
    out = {"labels": labels}
    for store in ("raw", "jpeg", "jpeg:50", "png"):
        path = tmp / f"{store.replace(':', '_')}.h5"
        done = subprocess.run([sys.executable, "-m", "uiaa_cli", "cache", str(labels), "-o", str(path), "--size",
                               str(SIZE), "--workers", "2", "--store", store], capture_output=True, timeout=300,
                              env={**os.environ, **PILLOW})
        assert done.returncode == 0, done.stderr
        assert f"({SIZE} px, {'jpeg:95' if store == 'jpeg' else store})" in done.stderr.decode()
        out[store] = path
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def test_every_store_reads_back_as_pixels(caches):
    with CacheReader(caches["raw"]) as raw:
        reference = raw.read(np.arange(24))
        assert raw.store.kind == "raw"
    with CacheReader(caches["png"]) as png:  # lossless
        np.testing.assert_array_equal(png.read(np.arange(24)), reference)
        assert png.store.kind == "png"
    with CacheReader(caches["jpeg"]) as jpeg, CacheReader(caches["jpeg:50"]) as low:
        assert (str(jpeg.store), str(low.store)) == ("jpeg:95", "jpeg:50")
        high_pixels, low_pixels = jpeg.read(np.arange(24)), low.read(np.arange(24))
        assert high_pixels.shape == reference.shape and high_pixels.dtype == np.uint8
        assert psnr(high_pixels, reference) >= 40 and psnr(high_pixels, reference) > psnr(low_pixels, reference) + 3
        assert jpeg.stored_bytes > low.stored_bytes
        # the same batch in any order, with repeats, decodes to the same pixels
        np.testing.assert_array_equal(jpeg.read([23, 0, 0, 7]), high_pixels[[23, 0, 0, 7]])
        assert jpeg.table["image"].tolist() == raw_names(caches)


def raw_names(caches: dict[str, Path]) -> list[str]:
    with CacheReader(caches["raw"]) as raw:
        return raw.table["image"].tolist()


def test_encoded_stores_are_smaller_on_disk(caches):
    sizes = {store: os.path.getsize(caches[store]) for store in ("raw", "jpeg", "jpeg:50")}
    with h5py.File(caches["jpeg"]) as f:
        assert len(f["encoded"]) < 24 * SIZE * SIZE * 3 / 2
    assert sizes["jpeg:50"] < sizes["jpeg"] < sizes["raw"]


def info_lines(out: bytes) -> dict[str, str]:
    lines = out.decode().splitlines()
    return {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in lines}


def test_info_describes_each_store(caches, uiaa):
    run = uiaa("cache", "--info", caches["jpeg"], "--project", "255502")
    assert run.returncode == 0 and not run.stderr, run.stderr
    info = info_lines(run.stdout)
    assert info["store"].startswith("jpeg:95 ") and info["images"] == f"24 of {SIZE} x {SIZE} px"
    file_bytes = os.path.getsize(caches["jpeg"])
    with h5py.File(caches["jpeg"]) as f:
        pixel_bytes = len(f["encoded"])
    assert info["file size"] == f"{file_bytes / 1e3:.1f} KB"
    assert pixel_bytes / 24 < 1000  # so shown in bytes
    assert info["per image"] == (f"{file_bytes / 24 / 1e3:.1f} KB in the file, {pixel_bytes / 24:.0f} bytes of "
                                 f"pixel data ({100 * pixel_bytes / 24 / (SIZE * SIZE * 3):.1f} % of raw 3.1 KB)")
    projected = info["projected"]
    assert projected.endswith(")") and "for 255,502 images (raw: " in projected
    # the projection grows with the images' bytes: at least the pixel data of 255,502 such images
    amount, unit = projected.split(" for ")[0].split()
    assert float(amount) * {"MB": 1e6, "GB": 1e9}[unit] >= pixel_bytes / 24 * 255502

    raw = info_lines(uiaa("cache", "--info", caches["raw"]).stdout)
    assert raw["store"].startswith("raw ") and "(100.0 % of raw 3.1 KB)" in raw["per image"]
    assert "projected" not in raw


@pytest.mark.parametrize("args, words", [
    (["--store", "gif"], "--store must be raw, jpeg, jpeg:QUALITY or png"),
    (["--store", "jpeg:0"], "1..100"),
    (["--store", "jpeg:101"], "1..100"),
    (["--store", "jpeg:high"], "1..100"),
    (["--store", "png:9"], "takes no quality"),
    (["--project", "10"], "--project goes with --info"),
])
def test_bad_store_options_are_one_line(tmp_path, uiaa, args, words):
    labels = make_photos(tmp_path, 1)
    run = uiaa("cache", labels, "-o", tmp_path / "c.h5", *args, env=PILLOW)
    assert run.returncode == 2 and words in run.stderr.decode(), run.stderr
    assert len(run.stderr.decode().strip().splitlines()) == 1 and not run.stdout
    assert not list(tmp_path.glob("c.h5*"))


def test_bad_info_uses_are_one_line(caches, tmp_path, uiaa):
    for args, words in (
        ([caches["labels"]], "not a readable HDF5 file"),
        ([caches["jpeg"], "-o", tmp_path / "x.h5"], "give no --output"),
        ([caches["jpeg"], "--project", "0"], "--project must be a positive"),
        ([tmp_path / "nope.h5"], "no such file"),
    ):
        run = uiaa("cache", "--info", *args)
        assert run.returncode == 2 and words in run.stderr.decode(), run.stderr
        assert len(run.stderr.decode().strip().splitlines()) == 1 and not run.stdout


def test_a_corrupt_stored_image_is_a_one_line_error(caches, tmp_path):
    from uiaa_cli.errors import UiaaError

    broken = tmp_path / "broken.h5"
    broken.write_bytes(caches["jpeg"].read_bytes())
    with h5py.File(broken, "r+") as f:
        start, stop = f["offsets"][3:5]
        f["encoded"][start:stop] = np.zeros(stop - start, np.uint8)
    with CacheReader(broken) as reader:
        reader.read([2])  # its neighbours are fine
        with pytest.raises(UiaaError, match="corrupt cache: image 3 cannot be decoded"):
            reader.read([2, 3])


def test_training_batches_from_worker_processes_match_the_reader(caches):
    """CacheSource decodes an encoded store in DataLoader workers: same pixels, same order."""
    from uiaa_cli.training.data import CacheSource

    batches = [np.array([0, 5, 6]), np.array([23]), np.array([1, 2, 3, 4])]
    with CacheReader(caches["jpeg"]) as reader:
        expected = [reader.read(rows) for rows in batches]
    for workers in (0, 2):
        source = CacheSource(str(caches["jpeg"]), workers=workers)
        got = list(source.batches(iter(batches)))
        source.close()
        assert [rows.tolist() for _, rows in got] == [rows.tolist() for rows in batches]
        for (pixels, _), want in zip(got, expected, strict=True):
            np.testing.assert_array_equal(pixels.numpy(), want)


def test_train_and_predict_read_a_jpeg_cache(caches, tmp_path, uiaa):
    run = tmp_path / "run"
    trained = uiaa("train", caches["jpeg"], "--arch", "resnet18", "--weights", "none", "--device", "cpu",
                   "--workers", "2", "--batch-size", "8", "--epochs", "1", "--val-frac", "0.25", "--out", run,
                   timeout=300)
    assert trained.returncode == 0, trained.stderr
    scores = {}
    for store in ("jpeg", "raw"):
        done = uiaa("predict", caches[store], "-m", run / "last.pt", "--workers", "1")
        assert done.returncode == 0, done.stderr
        rows = [line.split("\t") for line in done.stdout.decode().splitlines()]
        assert [name for name, _ in rows] == raw_names(caches)
        scores[store] = np.array([float(s) for _, s in rows])
    # The stored pixels differ by JPEG's rounding only (PSNR >= 40 dB): so do the scores.
    np.testing.assert_allclose(scores["jpeg"], scores["raw"], atol=0.05)
