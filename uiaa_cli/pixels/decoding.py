"""Decode batches of inputs in worker processes, ahead of the model, in order; no torch needed.

``decoded_batches(inputs, ...)`` cuts an iterator of :class:`uiaa_cli.predict.inputs.Input` into batches
and hands each to a pool of forked worker processes, keeping at most ``ahead`` batches in flight
(memory stays flat however many inputs there are), and yields them back in input order as
:class:`Decoded`: the batch's inputs, the uint8 pixels ``(k, S, S, 3)`` of those that decoded, and
a reason for each one that did not. While the caller runs the model on one batch, the workers
decode the next ones. ``workers=0``, or inputs that make a single batch, decode in the calling
process.

The workers resize with Pillow whatever the engine (``images.resize_without_torch``): both engines
see the same pixels, and the ONNX path never imports torch.

The workers are :mod:`uiaa_cli.pixels.workers`'s, as ``cache``'s are.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels import images
from uiaa_cli.pixels.workers import start_pool
from uiaa_cli.predict.inputs import Input

if TYPE_CHECKING:
    from uiaa_cli.pixels.cache import CacheReader

_SIZE = 0
_CACHES: dict[str, CacheReader] = {}  # cache path -> CacheReader, opened once per process


@dataclass
class Decoded:
    """One batch: ``inputs`` in order; ``good`` positions (into ``inputs``) of ``pixels``' rows;
    ``errors``: ``(position, reason)`` for each input that could not be decoded."""

    inputs: list[Input]
    good: np.ndarray
    pixels: np.ndarray
    errors: list[tuple[int, str]]


def decoded_batches(inputs: Iterator[Input], size: int, batch_size: int, workers: int,
                    ahead: int | None = None) -> Iterator[Decoded]:
    """Batches of ``inputs``, decoded to ``size`` px, in order; see the module doc."""
    # Pillow resizes for every engine: the same pixels whichever engine scores them (torch's kernel
    # differs by up to a grey level), and the ONNX path never imports torch.
    images.resize_without_torch()
    batches = iter(lambda: list(itertools.islice(inputs, batch_size)), [])
    # One batch in all (a photo or a few): decoded here, as starting workers costs more than it saves.
    first_two = list(itertools.islice(batches, 2))
    batches = itertools.chain(first_two, batches)
    if workers <= 0 or len(first_two) < 2:
        _init(size)
        for batch in batches:
            yield _assemble(batch, *decode_batch([item.source for item in batch]))
        return
    ahead = ahead or workers + 2
    pool = _start_pool(workers, size)
    pending: collections.deque[tuple[list[Input], Future]] = collections.deque()
    try:
        for batch in itertools.islice(batches, ahead):
            pending.append((batch, pool.submit(decode_batch, [item.source for item in batch])))
        while pending:
            batch, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise UiaaError("a decoding process died (out of memory? a crash in an image decoder?)") from None
            for more in itertools.islice(batches, 1):
                pending.append((more, pool.submit(decode_batch, [item.source for item in more])))
            yield _assemble(batch, *result)
    finally:
        # Stop now (| head closed the pipe, Ctrl-C, an error): queued batches are dropped and the
        # workers end with their current batch of a few images, which is waited for. A pool left
        # running, even one told to stop, has a manager thread that races the interpreter's exit
        # ("Exception ignored in: <module 'threading'> ... Bad file descriptor" on stderr).
        pool.shutdown(wait=True, cancel_futures=True)


def _assemble(batch: list[Input], good: list[int], pixels: np.ndarray, errors: list[tuple[int, str]]) -> Decoded:
    return Decoded(batch, np.asarray(good, dtype=np.int64), pixels, errors)


def _start_pool(workers: int, size: int) -> ProcessPoolExecutor:
    return start_pool(workers, _init_worker, (size,))


def _init(size: int) -> None:
    global _SIZE
    _SIZE = size


def _init_worker(size: int) -> None:
    _init(size)
    # Decode in the model's gaps: decoding is a few percent of the work, and a decoder preempting
    # one of the model's threads stalls all of them (they meet at barriers).
    try:
        os.nice(10)
    except OSError:
        pass


def decode_batch(sources: list[tuple]) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Decode one batch (in a worker): positions decoded, their pixels stacked, (position, reason)s."""
    good: list[int] = []
    pixels: list[np.ndarray] = []
    errors: list[tuple[int, str]] = []
    from_caches = _read_caches(sources)
    for position, source in enumerate(sources):
        try:
            pixels.append(from_caches[position] if position in from_caches else load(source, _SIZE))
            good.append(position)
        except (UiaaError, OSError, ValueError) as e:
            errors.append((position, getattr(e, "message", None) or str(e) or type(e).__name__))
        except Exception as e:  # noqa: BLE001 - one bad input must never stop the run
            errors.append((position, f"unexpected {type(e).__name__}: {e}"))
    stack = np.stack(pixels) if pixels else np.empty((0, _SIZE, _SIZE, 3), dtype=np.uint8)
    return good, stack, errors


def _read_caches(sources: list[tuple]) -> dict[int, np.ndarray]:
    """position -> pixels of a batch's cache inputs, one ``CacheReader.read`` per cache (it reads
    runs of neighbouring images at once). A cache with a corrupt image among them is left to
    ``load``, one image at a time, so the error names the image."""
    groups: dict[str, list[int]] = {}
    for position, source in enumerate(sources):
        if source[0] == "cache":
            groups.setdefault(source[1], []).append(position)
    found: dict[int, np.ndarray] = {}
    for path, positions in groups.items():
        try:
            found.update(zip(positions, _cache(path).read(np.array([sources[p][2] for p in positions]))))
        except (UiaaError, OSError):
            continue
    return found


def _cache(path: str) -> CacheReader:
    """The CacheReader of ``path``, opened once per process."""
    reader = _CACHES.get(path)
    if reader is None:
        from uiaa_cli.pixels.cache import CacheReader

        reader = _CACHES[path] = CacheReader(path)
    return reader


def load(source: tuple, size: int) -> np.ndarray:
    """The ``(size, size, 3)`` uint8 pixels of one input's source (see ``inputs.Input``)."""
    kind = source[0]
    if kind == "file":
        return images.decode_image(source[1], size)
    if kind == "table":  # resolved here, in the worker: a name that escapes the root is refused
        return images.decode_image(images.resolve_image(source[1], source[2]), size)
    if kind == "tar":
        _, path, offset, length = source
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise images.ImageError("the shard ends inside this member (truncated)")
        return images.decode_image(data, size)
    if kind == "cache":
        return _cache(source[1]).read(np.array([source[2]]))[0]
    if kind == "error":
        raise UiaaError(source[1])
    raise ValueError(f"unknown input source {kind!r}")
