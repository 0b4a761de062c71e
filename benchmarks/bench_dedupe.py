"""``uiaa dedupe``: hashing speed on 64-384 px caches, memory, and the pair search at AVA's scale.

SPEC §4 asks for the images/s of hashing and the projected time for AVA's 255,502 images. Measured:

* hashing from a cache (``dedupe.hash_cache``: ``CacheReader.read`` of 256-image batches, grey,
  32 x 32 area average, DCT, bits) on caches built by the real ``uiaa cache`` at 64, 128, 256 and
  384 px, and the hashing alone on the same pixels already in memory;
* the peak memory (max RSS) of the whole ``uiaa dedupe`` command on the 384 px cache;
* the pair search (``dedupe.close_hashes``, exact, tiled XOR + popcount on all cores) on N synthetic
  hashes, projected to 255,502 by N^2 (it is quadratic by design: no pair is ever missed), with its
  peak numpy memory (tracemalloc).

    .venv/bin/python benchmarks/bench_dedupe.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_dedupe.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from _common import machine, run_uiaa

AVA = 255_502


def make_cache(folder: Path, n: int, size: int) -> Path:
    """``n`` photo-like 512x384 JPEGs (1/f noise) -> ``uiaa labels`` -> ``uiaa cache --size size``."""
    img = folder / "img"
    if not img.exists():
        img.mkdir(parents=True)
        rng = np.random.default_rng(0)
        fy, fx = np.fft.fftfreq(384)[:, None], np.fft.rfftfreq(512)[None, :]
        f = np.hypot(fx, fy)
        f[0, 0] = 1
        for i in range(n):
            spectrum = rng.standard_normal((3, 384, 257)) + 1j * rng.standard_normal((3, 384, 257))
            x = np.fft.irfft2(spectrum / f, s=(384, 512)).transpose(1, 2, 0)
            x = 128 + 50 * (x - x.mean()) / x.std()
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(img / f"{i:05d}.jpg", quality=90)
        counts = rng.integers(1, 20, (n, 10))
        lines = ["image," + ",".join(str(b) for b in range(1, 11))]
        lines += [f"img/{i:05d}.jpg," + ",".join(map(str, c)) for i, c in enumerate(counts)]
        (folder / "counts.csv").write_text("\n".join(lines) + "\n")
        run_uiaa("labels", folder / "counts.csv", "-o", folder / "labels.csv")
    out = folder / f"cache{size}.h5"
    run_uiaa("cache", folder / "labels.csv", "-o", out, "--size", str(size), "--quiet")
    return out


def max_rss_mb(*args: object) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``uiaa ARGS``, measured by a fresh parent process (this
    one's RUSAGE_CHILDREN would include the ``uiaa cache`` runs before it)."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "uiaa_cli", *map(str, args)],
                          check=True, capture_output=True, text=True)
    return time.perf_counter() - t, int(done.stdout.split()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and hashes (a smoke run)")
    parser.add_argument("-n", type=int, default=None, help="images per cache (default 1024, quick 256)")
    parser.add_argument("--hashes", type=int, default=None, help="synthetic hashes in the pair search "
                                                                 "(default 40,000, quick 10,000)")
    args = parser.parse_args()
    n = args.n or (256 if args.quick else 1024)
    n_hashes = args.hashes or (10_000 if args.quick else 40_000)

    from uiaa_cli.pixels.cache import CacheReader
    from uiaa_cli.pixels.dedupe import close_hashes, features, hash_cache

    print(f"uiaa dedupe benchmark\nmachine: {machine()}\n")
    print(f"{'cache':>8}  {'images':>7}  {'from cache':>12}  {'in memory':>12}  {'AVA projected':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in (64, 128, 256, 384):
            cache = make_cache(folder, n, size)
            with CacheReader(cache) as reader:
                pixels = reader.read(np.arange(len(reader)))
            rates = []
            for _ in range(2):  # interleaved rounds: a busy machine disturbs both alike; best counts
                t = time.perf_counter()
                hash_cache(str(cache))
                from_cache = len(pixels) / (time.perf_counter() - t)
                t = time.perf_counter()
                for start in range(0, len(pixels), 256):
                    features(pixels[start:start + 256])
                rates.append((from_cache, len(pixels) / (time.perf_counter() - t)))
            from_cache, in_memory = max(r[0] for r in rates), max(r[1] for r in rates)
            print(f"{size:>5} px  {len(pixels):>7,}  {from_cache:>8,.0f} im/s  {in_memory:>8,.0f} im/s  "
                  f"{AVA / from_cache / 60:>10.1f} min")
            del pixels
        wall, rss = max_rss_mb("dedupe", cache, "-o", folder / "pairs.csv")
        print(f"\nwhole 'uiaa dedupe' on the {n:,}-image 384 px cache: {wall:.1f} s wall, peak RSS {rss:,.0f} MB")

    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, n_hashes, dtype=np.uint64)
    hashes[1::100] = hashes[::100][: len(hashes[1::100])] ^ np.uint64(0b1011)  # planted close pairs
    tracemalloc.start()
    t = time.perf_counter()
    i, _, _ = close_hashes(hashes, None, 12)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pairs = n_hashes * (n_hashes - 1) / 2
    projected = seconds * (AVA / n_hashes) ** 2
    print(f"\npair search, {n_hashes:,} hashes within one set ({pairs:,.0f} pairs): {seconds:.1f} s, "
          f"{pairs / seconds / 1e6:,.0f} M pairs/s, peak {peak / 2**20:,.0f} MB, {len(i):,} pairs <= 12 bits")
    print(f"projected for {AVA:,} AVA images (x{(AVA / n_hashes) ** 2:,.0f} pairs): {projected / 60:.1f} min; "
          f"memory does not grow with N (tiles of 4M pairs per thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
