"""``uiaa cache --store raw|jpeg|png``: size, fidelity, build, read, train and predict speed.

Bars (SPEC §4 and issue 12), at 384 px from 800x600 photos unless said otherwise:

- ``jpeg`` (quality 95) bytes per image <= 20 % of raw (SPEC §4; issue 12 asked for 15 %), PSNR of
  the stored pixels against raw >= 40 dB;
- training from a ``jpeg`` cache >= 90 % of the images/s from a ``raw`` cache (resnet18, 128 px,
  batch 32, 2 loader workers, the real training loop, both sides alternating in one run);
- predict likewise: ``CacheReader.read`` batches (predict's and dedupe's path) and the whole
  ``uiaa predict CACHE`` command, raw and jpeg alternating.

Also measured: the build (``uiaa cache``, 2 workers) per store, and the projected size and build time
of the full AVA (255,502 images); the two ways to keep variable-length bytes in HDF5 (a
variable-length dataset against one flat byte array plus offsets, as the cache does).

The photos: generated 800x600 JPEGs (quality 90) that a codec sees as photographs: a dead-leaves
scene (occluding shapes with power-law sizes: the standard model of natural-image statistics,
with sharp edges and a 1/f spectrum) in a few related colours, shaded by gradients, with 1/f
texture, a lens blur and sensor noise. ``--photos DIR`` measures size and fidelity on real photos
instead (any JPEGs; they are warped to 384 px like every cache image).

    .venv/bin/python benchmarks/bench_cache_store.py            # ~5-8 min on 2 busy cores
    .venv/bin/python benchmarks/bench_cache_store.py --quick    # smoke run
    .venv/bin/python benchmarks/bench_cache_store.py --photos ~/Pictures --only size
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from _common import report, run_uiaa

AVA = 255_502
STORES = ("raw", "jpeg", "png")


# ----------------------------------------------------------------------------------- photos


def pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit-variance noise with a 1/f amplitude spectrum, as natural images have."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = np.inf
    z = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
    img = np.fft.irfft2(z, s=(h, w))
    return img / img.std()


def natural_photo(rng: np.random.Generator, w: int = 800, h: int = 600) -> np.ndarray:
    """One photo-like (h, w, 3) uint8 picture (see the module doc)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    palette = rng.uniform(30, 220, (5, 3))
    img = palette[0] + (y[..., None] / h - 0.5) * rng.normal(0, 40, 3)  # a graded backdrop
    rmin, rmax = 6.0, 300.0
    for _ in range(250):
        u = rng.random()
        r = (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5  # p(r) ~ r^-3: scale invariant
        cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        x0, x1, y0, y1 = int(max(0, cx - r)), int(min(w, cx + r + 1)), int(max(0, cy - r)), int(min(h, cy + r + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = y[y0:y1, x0:x1], x[y0:y1, x0:x1]
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        colour = palette[rng.integers(len(palette))] + rng.normal(0, 12, 3)
        g = rng.normal(0, 0.15, 2)
        shade = 1 + (g[0] * (xx - cx) + g[1] * (yy - cy)) / r
        img[y0:y1, x0:x1][inside] = (colour * shade[..., None])[inside]
    img += 12 * pink_noise(rng, h, w)[..., None] * rng.uniform(0.5, 1.5, 3)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(im, np.float32) + rng.normal(0, 2, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_photos(folder: Path, n: int, distinct: int) -> list[str]:
    """``n`` 800x600 JPEGs: ``distinct`` generated scenes, the rest shifted and mirrored copies."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = [natural_photo(rng) for _ in range(distinct)]
    names = []
    for i in range(n):
        pixels = np.roll(scenes[i % distinct], (13 * (i // distinct)) % 800, axis=1)
        if (i // distinct) % 2:
            pixels = pixels[:, ::-1]
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        names.append(f"{i:05d}.jpg")
    return names


def write_counts(path: Path, names: list[str]) -> Path:
    """Vote counts for ``names`` (what ``uiaa labels`` reads), so train has targets."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 20, (len(names), 10))
    counts[:, 4] += 1
    lines = ["image," + ",".join(str(b) for b in range(1, 11))]
    lines += [f"{name}," + ",".join(map(str, c)) for name, c in zip(names, counts)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------- measuring


def build(labels: Path, images: Path, out: Path, size: int, store: str, workers: int = 2) -> float:
    """Seconds of the whole ``uiaa cache`` command."""
    start = time.perf_counter()
    run_uiaa("cache", labels, "--images", images, "-o", out, "--size", size, "--store", store,
             "--workers", workers, "--quiet")
    return time.perf_counter() - start


def worker_costs(paths: list[Path], size: int) -> dict[str, float]:
    """ms per image, one process, of what a build's worker does: decode + resize, then each encoding."""
    from uiaa_cli.pixels.cache_store import encode_pixels, parse_store
    from uiaa_cli.pixels.images import decode_image, preload

    preload()
    decode_image(paths[0], size)
    start = time.perf_counter()
    pixels = [decode_image(p, size) for p in paths]
    costs = {"raw": (time.perf_counter() - start) / len(paths) * 1e3}
    for store in ("jpeg", "png"):
        start = time.perf_counter()
        for image in pixels:
            encode_pixels(image, parse_store(store))
        costs[store] = costs["raw"] + (time.perf_counter() - start) / len(paths) * 1e3
    return costs


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, in dB."""
    mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))  # identical: 168 dB, "lossless" below


def read_speed(path: Path, batches: list[np.ndarray]) -> float:
    """ms per image of ``CacheReader.read`` over ``batches``."""
    from uiaa_cli.pixels.cache import CacheReader

    with CacheReader(path) as reader:
        reader.read(batches[0])
        start = time.perf_counter()
        for rows in batches:
            reader.read(rows)
        return (time.perf_counter() - start) / sum(len(b) for b in batches) * 1e3


def layouts_read_speed(jpeg_cache: Path, folder: Path, batches: list[np.ndarray]) -> tuple[float, float]:
    """ms per image reading the bytes only: (flat array + offsets, variable-length dataset)."""
    import h5py

    with h5py.File(jpeg_cache, "r") as f:
        encoded, offsets = f["encoded"][()], f["offsets"][()]
    vlen = folder / "vlen.h5"
    with h5py.File(vlen, "w") as f:
        ds = f.create_dataset("encoded", (len(offsets) - 1,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(len(offsets) - 1):
            ds[i] = encoded[offsets[i]:offsets[i + 1]]
    images = sum(len(b) for b in batches)
    with h5py.File(jpeg_cache, "r", rdcc_nbytes=0) as f:
        ds, start = f["encoded"], time.perf_counter()
        for rows in batches:
            for i in rows:
                ds[offsets[i]:offsets[i + 1]]
        flat = (time.perf_counter() - start) / images * 1e3
    with h5py.File(vlen, "r") as f:
        ds, start = f["encoded"], time.perf_counter()
        for rows in batches:
            ds[rows]
        variable = (time.perf_counter() - start) / images * 1e3
    return flat, variable


def train_speeds(raw: Path, jpeg: Path, folder: Path, rounds: int) -> tuple[list[float], list[float]]:
    """images/s of the real training loop (one epoch per round) from each cache, alternating."""
    import torch

    from uiaa_cli.training.checkpoints import Position
    from uiaa_cli.training.report import Reporter
    from uiaa_cli.training.runtime import Dist, StopFlag
    from uiaa_cli.training.settings import TrainSettings
    from uiaa_cli.training.trainer import Trainer

    torch.set_num_threads(2)
    trainers = {}
    for name, path in (("raw", raw), ("jpeg", jpeg)):
        settings = TrainSettings(data=str(path), arch="resnet18", weights="none", epochs=1, lr=(1e-3, 1e-3),
                                 batch_size=32, val_frac=0.0, device="cpu", workers=2,
                                 out=str(folder / f"run_{name}"), quiet=True)
        trainers[name] = Trainer(settings, Dist())
    quiet, stop = Reporter(False, False), StopFlag()

    def epoch(name: str) -> float:
        trainer = trainers[name]
        trainer.position = Position()
        trainer.train_epoch(0, stop, quiet)
        return trainer.position.seen / trainer.position.seconds

    epoch("raw"), epoch("jpeg")  # warm-up: oneDNN primitives, the page cache
    speeds: dict[str, list[float]] = {"raw": [], "jpeg": []}
    for r in range(rounds):
        for name in (("raw", "jpeg") if r % 2 == 0 else ("jpeg", "raw")):
            speeds[name].append(epoch(name))
        print(f"  train round {r + 1}: raw {speeds['raw'][-1]:.1f}, jpeg {speeds['jpeg'][-1]:.1f} img/s",
              file=sys.stderr)
    for trainer in trainers.values():
        trainer.close()
    return speeds["raw"], speeds["jpeg"]


def predict_seconds(cache: Path, model: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "uiaa_cli", "predict", str(cache), "-m", str(model), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (a smoke run)")
    parser.add_argument("--photos", type=Path, help="measure size and fidelity on these JPEGs instead")
    parser.add_argument("--only", choices=["size", "all"], default="all")
    args = parser.parse_args()
    n, distinct, rounds = (48, 8, 2) if args.quick else (128, 16, 3)
    rows: list[tuple[str, str, str, bool]] = []
    from uiaa_cli.pixels.cache import CacheReader, cache_info

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.photos:
            images = args.photos.resolve()
            names = sorted(str(p.relative_to(images)) for p in images.rglob("*") if p.suffix.lower() in
                           (".jpg", ".jpeg"))
            what = f"{len(names)} photos from {args.photos}"
        else:
            images = tmp / "photos"
            names = make_photos(images, n, distinct)
            what = f"{n} generated 800x600 photos ({distinct} scenes)"
        counts = write_counts(tmp / "counts.csv", names)
        run_uiaa("labels", counts, "-o", tmp / "labels.csv", "--quiet")
        labels = tmp / "labels.csv"

        # Size, fidelity and build time at 384 px: the stores alternate, best of two builds each.
        seconds: dict[str, float] = {store: float("inf") for store in STORES}
        for _ in range(1 if args.quick or args.photos else 2):
            for store in STORES:
                seconds[store] = min(seconds[store], build(labels, images, tmp / f"{store}.h5", 384, store))
        with CacheReader(tmp / "raw.h5") as raw_reader:
            raw_pixels = raw_reader.read(np.arange(len(raw_reader)))
        results = {}
        for store in STORES:
            with CacheReader(tmp / f"{store}.h5") as reader:
                fidelity = psnr(reader.read(np.arange(len(reader))), raw_pixels) if store != "raw" else None
                results[store] = (reader.stored_bytes / len(reader), fidelity)
            info = dict(cache_info(tmp / f"{store}.h5", AVA))
            print(f"  {store}: {info['per image']}; AVA: {info['projected']}", file=sys.stderr)
        raw_bytes = results["raw"][0]
        costs = worker_costs([images / name for name in names[:min(len(names), 24)]], 384)
        print(f"\nAt 384 px, {what}. images/s: whole 'uiaa cache --workers 2' command (start-up included); "
              "worker ms: decode + resize (+ encode), one process; AVA build: 255,502 x worker ms / 2 workers\n")
        print(f"{'store':<6} {'bytes/image':>12} {'of raw':>7} {'PSNR dB (mean, min)':>20} {'images/s':>9} "
              f"{'worker ms':>9} {'AVA size':>9} {'AVA build':>10}")
        for store in STORES:
            per_image, fidelity = results[store]
            rate = len(names) / seconds[store]
            quality = "lossless" if fidelity is None or fidelity.min() > 99 \
                else f"{fidelity.mean():.1f}, {fidelity.min():.1f}"
            print(f"{store:<6} {per_image / 1e3:>9.1f} KB {per_image / raw_bytes:>7.1%} {quality:>20} {rate:>9.1f} "
                  f"{costs[store]:>9.2f} {per_image * AVA / 1e9:>6.1f} GB {AVA * costs[store] / 2e3 / 60:>6.0f} min")
        jpeg_share, jpeg_psnr = results["jpeg"][0] / raw_bytes, results["jpeg"][1]
        rows += [
            ("jpeg bytes per image / raw (384 px)", f"{jpeg_share:.1%}", "<= 20%", jpeg_share <= 0.20),
            ("jpeg PSNR against raw, mean (min)", f"{jpeg_psnr.mean():.1f} ({jpeg_psnr.min():.1f}) dB", ">= 40 dB",
             jpeg_psnr.mean() >= 40),
        ]
        if args.only == "size" or args.photos:
            ok = report(f"uiaa cache --store, {what}", rows)
            return 0 if ok else 1

        # Reading: CacheReader.read in batches of 32 random images (predict's and dedupe's path).
        rng = np.random.default_rng(2)
        batches = [np.sort(rng.choice(len(names), 32, replace=False)) for _ in range(6 if args.quick else 12)]
        flat, variable = layouts_read_speed(tmp / "jpeg.h5", tmp, batches)
        reads = {"raw": [], "jpeg": []}
        for _ in range(rounds):
            for store in reads:
                reads[store].append(read_speed(tmp / f"{store}.h5", batches))
        print(f"\nbytes only, 384 px JPEGs, batches of 32: flat array + offsets {flat:.3f} ms/image, "
              f"variable-length dataset {variable:.3f} ms/image")
        print(f"CacheReader.read, 384 px, batches of 32, 1 process: raw {min(reads['raw']):.2f} ms/image, "
              f"jpeg {min(reads['jpeg']):.2f} ms/image (decoding included)")

        # Training and predicting at 128 px, on epochs of 512 images: the loader's decoding processes
        # start once per epoch (about 0.5-0.8 s on 2 cores), which a 128-image epoch would count as
        # 20 % of its time and a real data set's epoch (hundreds of thousands of images) does not.
        n_train = 128 if args.quick else 512
        train_images = tmp / "photos128"
        train_names = make_photos(train_images, n_train, distinct)
        run_uiaa("labels", write_counts(tmp / "counts128.csv", train_names), "-o", tmp / "labels128.csv", "--quiet")
        for store in ("raw", "jpeg"):
            build(tmp / "labels128.csv", train_images, tmp / f"{store}128.h5", 128, store)
        raw_train, jpeg_train = train_speeds(tmp / "raw128.h5", tmp / "jpeg128.h5", tmp, rounds)
        train_ratio = max(jpeg_train) / max(raw_train)
        run_uiaa("train", tmp / "raw128.h5", "--arch", "resnet18", "--weights", "none", "--epochs", "1",
                 "--val-frac", "0.1", "--device", "cpu", "--out", tmp / "model", "--quiet")
        model = tmp / "model" / "last.pt"
        predict_seconds(tmp / "raw128.h5", model)  # warm-up: the ONNX export, the page cache
        waits: dict[str, list[float]] = {"raw": [], "jpeg": []}
        for r in range(rounds):
            for store in (("raw", "jpeg") if r % 2 == 0 else ("jpeg", "raw")):
                waits[store].append(predict_seconds(tmp / f"{store}128.h5", model))
        predict_ratio = min(waits["raw"]) / min(waits["jpeg"])
        reads128 = {"raw": [], "jpeg": []}
        for _ in range(rounds):
            for store in reads128:
                reads128[store].append(read_speed(tmp / f"{store}128.h5", batches))
        print(f"CacheReader.read, 128 px: raw {min(reads128['raw']):.3f}, jpeg {min(reads128['jpeg']):.3f} ms/image")
        rows += [
            (f"train images/s from jpeg / raw (resnet18, 128 px, epochs of {n_train})",
             f"{max(jpeg_train):.1f} / {max(raw_train):.1f} = {train_ratio:.0%}", ">= 90%", train_ratio >= 0.9),
            ("uiaa predict CACHE images/s, jpeg / raw (128 px)",
             f"{n_train / min(waits['jpeg']):.2f} / {n_train / min(waits['raw']):.2f} = {predict_ratio:.0%}", ">= 90%",
             predict_ratio >= 0.9),
            ("read 384 px (ms/image), raw / jpeg", f"{min(reads['raw']):.2f} / {min(reads['jpeg']):.2f}", "", True),
            ("bytes only: flat+offsets / vlen (ms/image)", f"{flat:.3f} / {variable:.3f}", "", True),
        ]
    ok = report(f"uiaa cache --store, {what}, {os.cpu_count()} cores", rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
