"""The worker processes of a cache build: each resolves, decodes and resizes a batch of images (and
encodes them, for a jpeg or png store) into its slot of a shared-memory ring.

Pickling 442 KB per image through a pipe cost the writer more CPU than the HDF5 write itself, so
where the platform forks the pixels go through an anonymous shared mapping instead; elsewhere they
come back pickled. The parent (:mod:`uiaa_cli.pixels.cache_build`) hands out the batches and writes
them; workers never touch h5py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels import images
from uiaa_cli.pixels.cache_store import encode_pixels, parse_store
from uiaa_cli.pixels.workers import CAN_FORK, start_pool

BATCH = 16  # images per task: amortises the hand-over between processes, keeps workers balanced

_ROOT = ""
_SIZE = 0
_RING: np.ndarray | None = None  # (slots, BATCH, S, S, 3) shared with the parent, where fork is available


def _init_worker(root: str, size: int, ring: Any) -> None:
    global _ROOT, _SIZE, _RING
    _ROOT, _SIZE = root, size
    _RING = None if ring is None else ring_view(ring, size)


Decoded = tuple[list[int], "np.ndarray | None", "np.ndarray | None", list[tuple[int, str]]]


def decode_batch(task: tuple[int, str, list[tuple[int, str]]]) -> Decoded:
    """Decode (and encode, for jpeg/png) one batch into ring slot ``task[0]``:
    (rows decoded, byte lengths (encoded stores) or None, None, [(row, reason) skipped]).

    Without a ring, or when the encoded batch does not fit its slot, the pixels (stacked) or the
    bytes (concatenated) come back in place of the second None (pickled through a pipe, which
    cost the parent 1.5 ms of CPU per raw 384 px image: more than a quarter of a decode).
    """
    slot, store_text, items = task
    store = parse_store(store_text)
    rows: list[int] = []
    pixels: list[np.ndarray] = []
    encoded: list[bytes] = []
    skipped: list[tuple[int, str]] = []
    for row, name in items:
        try:
            # Looked up on the module at call time, so a wrapper (tests count decodes) sees it.
            image = images.decode_image(images.resolve_image(_ROOT, name), _SIZE)
        except UiaaError as e:
            skipped.append((row, e.message))
            continue
        except Exception as e:  # noqa: BLE001 - one bad image must never stop the run
            skipped.append((row, f"unexpected {type(e).__name__}: {e}"))
            continue
        if store.encoded:
            encoded.append(encode_pixels(image, store))
        elif _RING is not None:
            _RING[slot, len(rows)] = image
        else:
            pixels.append(image)
        rows.append(row)
    if store.encoded:
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        flat = None if _RING is None else _RING[slot].reshape(-1)
        if flat is None or len(data) > len(flat):
            return rows, lengths, data, skipped
        flat[:len(data)] = data
        return rows, lengths, None, skipped
    if _RING is not None:
        return rows, None, None, skipped
    return rows, None, (np.stack(pixels) if pixels else np.empty((0, _SIZE, _SIZE, 3), np.uint8)), skipped


def ring_view(ring: Any, size: int) -> np.ndarray:
    return np.frombuffer(ring, dtype=np.uint8).reshape(-1, BATCH, size, size, 3)


def start_decoders(n_workers: int, root: str, size: int) -> tuple[ProcessPoolExecutor, Any, int]:
    """(pool, ring or None, slots): started workers, and the shared memory they decode into."""
    slots = n_workers + 2  # a batch being decoded per worker, one being written, one waiting
    ring: Any = None
    if CAN_FORK:
        # Forked workers inherit an anonymous shared mapping (nothing to clean up, even after
        # kill -9). They never touch h5py.
        import mmap

        ring = mmap.mmap(-1, slots * BATCH * size * size * 3)
    pool = start_pool(n_workers, _init_worker, (root, size, ring))
    pool.submit(int).result()  # with fork, the first task starts every worker: now, before any file is open
    return pool, ring, slots


def batch_bounds(n: int, n_workers: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch: BATCH images, shrinking near the end so that the workers
    finish together instead of one decoding a last full batch while the others wait."""
    start = 0
    while start < n:
        stop = start + min(BATCH, -(-(n - start) // (2 * n_workers)))
        yield start, stop
        start = stop
