"""``uiaa dedupe``: near-duplicate images within a data set or between two, by perceptual hash.

The hash (pHash, as in Zauner 2010): each image is turned grey, area-averaged to 32 x 32 and
transformed by a 2-D DCT (all three linear, so two small matrix products per image); the 8 x 8
lowest frequencies but the DC term give 63 coefficients and 63 bits, each set where its
coefficient is above their median. Low frequencies survive re-encoding, resizing and small crops,
so near-duplicates differ in a few bits (planted copies re-encoded at quality 50, resized to 90 %
and cropped 3 %: at most 10 of 63) while unrelated photos differ in about half of them.

Two more tests cut false pairs (photos with the same grey layout, such as the example data's
sky-ground-subject scenes): two images whose hashes are within ``max_distance`` bits are a pair only
if their 63 coefficients (centred, as unit vectors stored in int8) also correlate above
``min_similarity`` (planted copies >= 0.98; unrelated images < 0.8) and their 4 x 4 colour
thumbnails differ by at most ``MAX_COLOUR_DIFFERENCE`` grey levels on average (planted copies <= 2.2;
unrelated photo-like images >= 15; the example data's same-layout scenes >= 19).

Everything is numpy on whole batches; torch is never imported. The pair search never loops over
pairs in Python and its memory is bounded: hashes are compared a tile at a time (XOR, then a popcount
of every pair in the tile), tiles spread over threads (numpy releases the GIL), so the work is
N^2/2 popcounts in tiles of ``TILE`` pairs, exact (no pair within the distance is missed).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.table import Table

HASH_SIDE = 32  # the grey thumbnail the DCT sees
LOW = 8  # the LOW x LOW lowest frequencies (less the DC term) make the hash
DEFAULT_DISTANCE = 12  # bits; planted copies measured at <= 10 (README "dedupe")
DEFAULT_SIMILARITY = 0.9  # correlation of the coefficients; planted copies >= 0.98
MAX_COLOUR_DIFFERENCE = 8.0  # mean |difference| of the 4 x 4 x RGB thumbnails, in grey levels
COLOUR_SIDE = 4
BATCH = 256  # images hashed at once
TILE = 1 << 22  # pairs compared at once per thread: 32 MB of XORs
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ---------------------------------------------------------------------------------- hashing


@dataclass
class Features:
    """Per image: the 64-bit hash, the 63 low-frequency coefficients as an int8 unit vector, and
    the 4 x 4 colour thumbnail."""

    hashes: np.ndarray  # (N,) uint64
    vectors: np.ndarray  # (N, 63) int8, x 127
    colours: np.ndarray  # (N, 48) uint8: 4 x 4 cells x RGB means

    @staticmethod
    def empty(n: int) -> Features:
        return Features(np.zeros(n, dtype=np.uint64), np.zeros((n, LOW * LOW - 1), dtype=np.int8),
                        np.zeros((n, COLOUR_SIDE * COLOUR_SIDE * 3), dtype=np.uint8))

    def take(self, rows: np.ndarray) -> Features:
        return Features(self.hashes[rows], self.vectors[rows], self.colours[rows])

    def put(self, rows: slice | np.ndarray, other: Features) -> None:
        self.hashes[rows], self.vectors[rows], self.colours[rows] = other.hashes, other.vectors, other.colours


def area_matrix(size: int, side: int = HASH_SIDE) -> np.ndarray:
    """``(side, size)`` weights that average a length-``size`` axis into ``side`` equal cells
    (a pixel cut by a cell border counts in proportion), so any size downsamples the same way."""
    edges = np.linspace(0.0, size, side + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def projections(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(LOW, h)`` and ``(w*3, LOW)`` matrices whose product with an image is the LOW x LOW
    low-frequency corner of the orthonormal 2-D DCT-II of its 32 x 32 grey area average: the average,
    the grey conversion and the DCT are all linear, so they fold into two small matrices."""
    from scipy.fft import dct

    basis = dct(np.eye(HASH_SIDE), type=2, norm="ortho", axis=0)[:LOW]  # (LOW, 32)
    left = (basis @ area_matrix(h)).astype(np.float32)
    right = np.kron(area_matrix(w).T @ basis.T, LUMA[:, None])  # row 3x+c weighs channel c of pixel x
    return left, right.astype(np.float32)


@functools.lru_cache(maxsize=8)
def colour_projections(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(4, h)`` and ``(w*3, 12)`` matrices that area-average an image to 4 x 4 cells per channel."""
    right = np.kron(area_matrix(w, COLOUR_SIDE).T, np.eye(3, dtype=np.float32))
    return area_matrix(h, COLOUR_SIDE), right.astype(np.float32)


def features(pixels: np.ndarray) -> Features:
    """Hashes and coefficient vectors of uint8 images ``(B, H, W, 3)`` (or grey ``(B, H, W)``)."""
    pixels = np.asarray(pixels)
    n, h, w = pixels.shape[:3]
    colour = np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 3 else pixels  # grey: R = G = B
    left, right = projections(h, w)
    c_left, c_right = colour_projections(h, w)
    flat = colour.reshape(n, h, -1)
    low = np.empty((n, LOW, LOW), dtype=np.float32)
    thumbs = np.empty((n, COLOUR_SIDE, COLOUR_SIDE * 3), dtype=np.float32)
    step = max(1, (1 << 22) // max(flat[0].size, 1))  # about 16 MB of float32 pixels at a time
    for start in range(0, n, step):
        # One 2-D product over all rows of the chunk (numpy's stacked 3-D matmul is ~10x slower).
        part = flat[start:start + step]
        rows2d = part.reshape(-1, part.shape[2]).astype(np.float32)
        low[start:start + step] = left @ (rows2d @ right).reshape(len(part), h, LOW)
        thumbs[start:start + step] = c_left @ (rows2d @ c_right).reshape(len(part), h, 3 * COLOUR_SIDE)
    low = low.reshape(n, LOW * LOW)[:, 1:]
    bits = low > np.median(low, axis=1, keepdims=True)
    centred = low - low.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    # A flat image has no coefficients to speak of: a zero vector, similar to nothing.
    unit = np.where(norm > 1e-3, centred / np.maximum(norm, 1e-3), 0.0)
    return Features(pack_bits(bits), np.rint(unit * 127).astype(np.int8),
                    np.clip(np.rint(thumbs.reshape(n, -1)), 0, 255).astype(np.uint8))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Rows of up to 64 booleans -> uint64, first bit most significant."""
    padded = np.zeros((len(bits), 64), dtype=bool)
    padded[:, :bits.shape[1]] = bits
    return np.packbits(padded, axis=1).view(">u8")[:, 0].astype(np.uint64)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise correlation of int8 coefficient vectors (1 for the same picture), within [-1, 1].

    The vectors are unit vectors rounded to int8, so their norms are 1 only to within the rounding
    (a picture against itself gave 1.0002): a correlation is clamped to where correlations lie.
    """
    dot = np.einsum("nk,nk->n", a.astype(np.int32), b.astype(np.int32)) / 127.0**2
    return np.clip(dot, -1.0, 1.0)


# ----------------------------------------------------------------------------- the pair search


def close_hashes(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = DEFAULT_DISTANCE,
                 threads: int | None = None, tile: int = TILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j, distance)`` of hashes within ``max_distance`` bits, exactly.

    Within one set (``b`` None): each pair once, ``i < j``. Between two: ``i`` indexes ``a``, ``j``
    indexes ``b``. Tiles of about ``tile`` pairs per thread bound the memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    a = np.ascontiguousarray(a, dtype=np.uint64)
    within = b is None
    b = a if b is None else np.ascontiguousarray(b, dtype=np.uint64)
    rows = max(1, min(len(a), tile // max(len(b), 1)))
    cols = max(1, tile // rows)

    def band(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = a[start:start + rows, None]
        out_i, out_j, out_d = [], [], []
        # Within one set only the columns after the block's first row can pair with it.
        for first in range(start + 1 if within else 0, len(b), cols):
            dist = np.bitwise_count(block ^ b[None, first:first + cols])
            i, j = np.nonzero(dist <= max_distance)
            if within:
                keep = j + first > i + start
                i, j = i[keep], j[keep]
            out_i.append(i + start)
            out_j.append(j + first)
            out_d.append(dist[i, j])
        if not out_i:
            return (np.zeros(0, dtype=np.int64),) * 3
        return tuple(np.concatenate(x).astype(np.int64) for x in (out_i, out_j, out_d))

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        found = list(pool.map(band, range(0, len(a), rows)))
    if not found:
        return (np.zeros(0, dtype=np.int64),) * 3
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))


def pairs(a: Features, b: Features | None = None, max_distance: int = DEFAULT_DISTANCE,
          min_similarity: float = DEFAULT_SIMILARITY, threads: int | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs ``(i, j, distance, similarity)``: close hashes whose coefficients also
    correlate and whose colour thumbnails agree, closest first."""
    i, j, d = close_hashes(a.hashes, None if b is None else b.hashes, max_distance, threads)
    other = a if b is None else b
    sim = similarity(a.vectors[i], other.vectors[j])
    colour = np.abs(a.colours[i].astype(np.int16) - other.colours[j]).mean(axis=1)
    keep = (sim >= min_similarity) & (colour <= MAX_COLOUR_DIFFERENCE)
    i, j, d, sim = i[keep], j[keep], d[keep], sim[keep]
    order = np.lexsort((j, i, -sim, d))
    return i[order], j[order], d[order], sim[order]


# ------------------------------------------------------------------------------- the inputs


@dataclass
class Hashed:
    """The images of one input that could be read, their features, and those that could not, with why."""

    path: str
    names: np.ndarray
    features: Features
    failed: list[tuple[str, str]]


def hash_input(path: str, images: str | None = None, workers: int | None = None) -> Hashed:
    """Features of every image of a cache (its stored pixels) or of a labels table (decoded from
    ``images``, default the table's folder)."""
    from uiaa_cli.pixels.cache import is_cache

    if is_cache(path):
        return hash_cache(path)
    return hash_table(path, images, workers)


def hash_cache(path: str, batch: int = BATCH) -> Hashed:
    """Features of a cache's pixels, read ``batch`` images at a time (memory flat)."""
    from uiaa_cli.pixels.cache import CacheReader

    with CacheReader(path) as reader:
        names = np.asarray(reader.table["image"]).astype(str)
        out = Features.empty(len(reader))
        for start in range(0, len(reader), batch):
            rows = np.arange(start, min(start + batch, len(reader)))
            out.put(rows, features(reader.read(rows)))
    return Hashed(path, names, out, [])


_ROOT = ""  # a decoding worker's image folder
DECODE_SIDE = 64  # decoded to this side (JPEG DCT scaling does most of the work), hashed from there


def _init_decoder(root: str) -> None:
    global _ROOT
    _ROOT = root
    os.environ["UIAA_RESIZE"] = "pillow"  # images.decode_image resizes with Pillow: no torch here


def _hash_names(names: list[str]) -> tuple[Features, list[tuple[int, str]]]:
    """Features of the images ``names`` (zeros where one failed) and (position, reason) of failures."""
    from uiaa_cli.pixels.images import decode_image, resolve_image

    pixels = np.zeros((len(names), DECODE_SIDE, DECODE_SIDE, 3), dtype=np.uint8)
    failed: list[tuple[int, str]] = []
    for k, name in enumerate(names):
        try:
            pixels[k] = decode_image(resolve_image(_ROOT, name), DECODE_SIDE)
        except UiaaError as e:
            failed.append((k, e.message))
        except Exception as e:  # noqa: BLE001 - one bad image must never stop the run
            failed.append((k, f"unexpected {type(e).__name__}: {e}"))
    return features(pixels), failed


def hash_table(path: str, images: str | None, workers: int | None = None, batch: int = BATCH) -> Hashed:
    """Features of a labels table's images, decoded by ``workers`` processes."""
    from concurrent.futures import ProcessPoolExecutor

    from uiaa_cli.pixels.images import image_table

    table, root = image_table(path, images)
    names = np.asarray(table["image"]).astype(str)
    workers = workers or os.cpu_count() or 1
    out = Features.empty(len(names))
    ok = np.ones(len(names), dtype=bool)
    failed: list[tuple[str, str]] = []
    chunk = max(1, min(batch, -(-len(names) // (4 * workers))))
    starts = range(0, len(names), chunk)
    with ProcessPoolExecutor(workers, initializer=_init_decoder, initargs=(str(root),)) as pool:
        done = pool.map(_hash_names, (names[s:s + chunk].tolist() for s in starts))
        for start, (got, bad) in zip(starts, done, strict=True):
            out.put(slice(start, start + chunk), got)
            for k, reason in bad:
                ok[start + k] = False
                failed.append((str(names[start + k]), reason))
    if len(names) and not ok.any():
        raise UiaaError(f"none of its {len(names):,} images could be read (is --images the right folder?)",
                        where=at(path))
    return Hashed(path, names[ok], out.take(ok), failed)


# ------------------------------------------------------------------------------------ dedupe


@dataclass
class DedupeReport:
    """What ``dedupe`` compared and found, for the summary on stderr."""

    images_a: int
    images_b: int | None  # None: within A
    pairs: int
    seconds_hashing: float
    seconds_search: float
    failed: list[tuple[str, str]]


def dedupe(a: str, b: str | None = None, *, images: str | None = None, images_b: str | None = None,
           max_distance: int = DEFAULT_DISTANCE, min_similarity: float = DEFAULT_SIMILARITY,
           workers: int | None = None) -> tuple[Table, DedupeReport]:
    """The near-duplicate pairs within ``a`` (or between ``a`` and ``b``), closest first."""
    import time

    if not 0 <= max_distance <= 63:
        raise UiaaError(f"--max-distance must lie in 0..63 bits, got {max_distance}")
    if not -1 <= min_similarity <= 1:
        raise UiaaError(f"--min-similarity must lie in [-1, 1], got {min_similarity}")
    if b is not None and Path(a).resolve() == Path(b).resolve():
        b = None  # the same data set twice: pairs within it
    started = time.perf_counter()
    first = hash_input(a, images, workers)
    second = hash_input(b, images_b or images, workers) if b is not None else None
    hashed = time.perf_counter()
    i, j, d, sim = pairs(first.features, None if second is None else second.features, max_distance,
                         min_similarity, workers)
    other = first if second is None else second
    table = Table({"image_a": first.names[i], "image_b": other.names[j], "distance": d,
                   "similarity": np.round(sim, 4)},
                  {"uiaa": "dedupe", "hash": "phash-dct-63", "max_distance": max_distance,
                   "min_similarity": min_similarity})
    report = DedupeReport(len(first.names), None if second is None else len(second.names), len(d),
                          hashed - started, time.perf_counter() - hashed,
                          first.failed + ([] if second is None else second.failed))
    return table, report
