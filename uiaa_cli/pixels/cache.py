"""A uiaa cache, the file ``uiaa cache`` writes: its format, and reading it back without torch.

Layout of a finished cache (attributes on the root unless said otherwise; in full in
docs/formats.md); ``--store`` picks how the pixels are kept (:mod:`uiaa_cli.pixels.cache_store`)::

    raw:     images   uint8 (N, S, S, 3) RGB, one image per chunk, no HDF5 compression
    jpeg/png: encoded uint8 (B,), the N images' files (JPEG or PNG of the S x S pixels), one after
                      another, contiguous; image i is ``encoded[offsets[i]:offsets[i + 1]]``
              offsets int64 (N + 1,)
    table/   the labels table of the N images that made it in, in the same order as the images
             (``uiaa convert cache.h5 x.csv`` and ``tables.table.read_table`` read it)
    skipped/ a table: image, reason, for every image left out
    attrs    store ("raw", "jpeg" or "png"), quality (jpeg), size, mean, std (ImageNet normalisation
             for train), layout, images_root, labels, complete=True (set last; the file only gets its
             final name once complete)

``CacheReader.read`` returns uint8 (B, S, S, 3) pixels whatever the store, so nothing else needs to
know. Why one flat byte array and offsets rather than an HDF5 variable-length dataset: it is written
into space allocated when the build starts (the property the build's safety rests on, see
:mod:`uiaa_cli.pixels.cache_partial`), while each variable-length write changes HDF5's global heap;
and it reads 2.5-4x faster (0.18 against 0.79 ms per 75 KB image, batches of 32 random images, on a
loaded 2-core VM; benchmarks/bench_cache_store.py).

Here: ``is_cache``, ``CacheReader`` (``.read`` and ``.iter_batches``) and ``cache_info`` (the lines
of ``uiaa cache --info``). Building one is :mod:`uiaa_cli.pixels.cache_build`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.pixels.cache_store import Store, decode_pixels
from uiaa_cli.tables.table import TABLE_GROUP, is_hdf5, read_table

MEAN = (0.485, 0.456, 0.406)  # ImageNet, what torchvision's pretrained weights expect
STD = (0.229, 0.224, 0.225)
SKIPPED_GROUP = "skipped"
FORMAT = "uiaa-cache-1"


def is_cache(path: str | os.PathLike) -> bool:
    """True for a uiaa cache (an HDF5 file with stored pixels, raw or encoded), False for anything else."""
    import h5py

    if not is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "images" in f or "encoded" in f or "pool" in f  # pool: an unfinished jpeg/png build
    except OSError:
        return False


def image_count(f: Any) -> int:
    """Images in a finished cache, whatever its store."""
    return len(f["images"]) if "images" in f else len(f["offsets"]) - 1


class CacheReader:
    """Read a finished cache without torch: ``.table``, ``.size``, ``.store``, ``len()``, ``.read(indices)``.

    Safe to hand to worker processes (the HDF5 file is reopened in each process).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._file: Any = None
        self._pid = -1
        try:
            f = self._open()
        except FileNotFoundError:
            raise UiaaError("no such file", where=at(self.path)) from None
        except OSError as e:
            raise UiaaError(f"not a readable HDF5 file ({e})", where=at(self.path)) from None
        encoded = "encoded" in f and "offsets" in f
        if not bool(f.attrs.get("complete", False)) or not ("images" in f or encoded) or TABLE_GROUP not in f:
            hint = " (an interrupted build? run uiaa cache with --resume)" if "committed" in f else ""
            self.close()
            raise UiaaError(f"not a finished uiaa cache{hint}", where=at(self.path))
        self.size = int(f.attrs["size"])
        self.mean = tuple(float(v) for v in f.attrs.get("mean", MEAN))
        self.std = tuple(float(v) for v in f.attrs.get("std", STD))
        quality = f.attrs.get("quality")
        self.store = Store(str(f.attrs.get("store", "jpeg")), int(quality) if quality is not None else None) \
            if encoded else Store("raw")
        # Encoded: where each image's bytes start and end (8 bytes per image, 2 MB for AVA).
        self.offsets = f["offsets"][()] if encoded else None
        self.table = read_table(self.path)
        self.skipped = read_skipped(f)
        if len(self.table) != image_count(f):
            raise UiaaError("corrupt cache: table and images differ in length", where=at(self.path))
        if encoded and (self.offsets[0] != 0 or np.any(np.diff(self.offsets) <= 0)
                        or self.offsets[-1] != len(f["encoded"])):
            raise UiaaError("corrupt cache: the image offsets do not fit the stored bytes", where=at(self.path))

    def _open(self) -> Any:
        """The HDF5 file, opened in this process."""
        if self._file is None or self._pid != os.getpid():
            import h5py

            # No chunk cache: every read is whole chunks, straight into the caller's buffer.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
            self._pid = os.getpid()
        return self._file

    def _images(self) -> Any:
        """The ``images`` dataset (raw) or the ``encoded`` bytes, opened in this process."""
        return self._open()["encoded" if self.store.encoded else "images"]

    def __len__(self) -> int:
        return len(self.table)

    @property
    def stored_bytes(self) -> int:
        """Bytes of pixel data (the images' files for an encoded store)."""
        return int(self.offsets[-1]) if self.offsets is not None else len(self) * self.size ** 2 * 3

    def read(self, indices: Any) -> np.ndarray:
        """Images ``indices`` (any order, repeats allowed) as uint8 ``(B, S, S, 3)``, in that order,
        whatever the store (encoded images are decoded here, with Pillow).

        Reads in file order, one HDF5 read per run of consecutive images.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a cache of {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        if not len(idx):
            return out
        ds = self._images()
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        if self.offsets is not None:
            self._read_encoded(ds, sorted_idx, order, out)
            return out
        # A run continues while both the file index and the output position go up by one.
        breaks = np.flatnonzero((np.diff(sorted_idx) != 1) | (np.diff(order) != 1)) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            first, count, dest = int(sorted_idx[start]), int(stop - start), int(order[start])
            ds.read_direct(out, np.s_[first:first + count], np.s_[dest:dest + count])
        return out

    def _read_encoded(self, ds: Any, sorted_idx: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
        """Decode images ``sorted_idx`` into ``out[order]``: one read per run of neighbouring images
        (repeats included), one decode per distinct image."""
        offsets = self.offsets
        breaks = np.flatnonzero(np.diff(sorted_idx) > 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(sorted_idx)]):
            first, last = int(sorted_idx[start]), int(sorted_idx[stop - 1])
            base = int(offsets[first])
            span = ds[base:int(offsets[last + 1])]
            for k in range(start, stop):
                i = int(sorted_idx[k])
                if k > start and sorted_idx[k - 1] == i:  # a repeat: copy the image just decoded
                    out[order[k]] = out[order[k - 1]]
                    continue
                try:
                    decode_pixels(span[offsets[i] - base:offsets[i + 1] - base], out[order[k]])
                except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt data
                    raise UiaaError(f"corrupt cache: image {i} cannot be decoded ({type(e).__name__}: {e})",
                                    where=at(self.path)) from None

    def iter_batches(self, batch_size: int = 32, shuffle: bool = False,
                     seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, uint8 batch) over the whole cache, shuffled with ``seed`` if asked; the last
        batch may be short."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            yield chunk, self.read(chunk)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state


def read_skipped(f: Any) -> list[tuple[str, str]]:
    if SKIPPED_GROUP not in f:
        return []
    g = f[SKIPPED_GROUP]
    if "image" not in g or not len(g["image"]):
        return []
    return list(zip(g["image"].asstr()[()].tolist(), g["reason"].asstr()[()].tolist()))


# ---------------------------------------------------------------------------------- describing


def cache_info(path: str | os.PathLike, project: int | None = None) -> list[tuple[str, str]]:
    """(what, value) lines describing a finished cache, with its size projected to ``project`` images."""
    if project is not None and project < 1:
        raise UiaaError(f"--project must be a positive number of images, got {project}")
    with CacheReader(path) as reader:
        n, size, store = len(reader), reader.size, reader.store
        pixels = reader.stored_bytes
        skipped = len(reader.skipped)
        # What grows with the images besides their pixels: a row of the labels table, an offset.
        per_row = sum(reader.table[name].dtype.itemsize for name in reader.table.names) + 8 * store.encoded
    file_bytes = os.path.getsize(path)
    raw = size * size * 3
    fixed = max(0, file_bytes - pixels - n * per_row)  # HDF5's structure, the skipped table

    def projected(pixel_bytes: float) -> str:
        return _bytes(fixed + project * (pixel_bytes + per_row))
    how = {"raw": "uint8 pixels", "jpeg": "a JPEG file per image, decoded when read",
           "png": "a PNG file per image (lossless), decoded when read"}[store.kind]
    lines = [
        ("cache", str(path)),
        ("store", f"{store} ({how})"),
        ("images", f"{n:,} of {size} x {size} px" + (f"; {skipped:,} skipped" if skipped else "")),
        ("file size", _bytes(file_bytes)),
    ]
    if n:
        lines.append(("per image", f"{_bytes(file_bytes / n)} in the file, {_bytes(pixels / n)} of pixel data "
                                   f"({100 * pixels / n / raw:.1f} % of raw {_bytes(raw)})"))
        if project:
            lines.append(("projected", f"{projected(pixels / n)} for {project:,} images (raw: {projected(raw)})"))
    elif project:
        lines.append(("projected", "unknown: the cache holds no images"))
    return lines


def _bytes(n: float) -> str:
    """Decimal units, as disks are sold: 442.4 KB, 113.0 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"
