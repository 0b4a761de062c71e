"""``uiaa cache``: decode every image of a labels table once into one HDF5 file (its format, and
reading it: :mod:`uiaa_cli.pixels.cache`; in full in docs/formats.md).

Building (``build_cache``): forked worker processes (:mod:`uiaa_cli.pixels.cache_workers`) resolve
and decode batches of 16 images into a shared-memory ring (pickling 442 KB per image through a pipe
cost the writer more CPU than the HDF5 write itself); the main process only writes, batch by batch
in labels order, with at most ``workers + 2`` batches in flight, so memory stays flat. Work goes to
``OUT.partial`` (:mod:`uiaa_cli.pixels.cache_partial`), which a build killed at any moment leaves
readable and ``--resume`` continues; the file only gets its final name once complete.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.pixels import images
from uiaa_cli.pixels.cache import FORMAT, MEAN, STD, image_count, read_skipped
from uiaa_cli.pixels.cache_partial import PartialCache, partial_path
from uiaa_cli.pixels.cache_store import Store, parse_store
from uiaa_cli.pixels.cache_workers import BATCH, batch_bounds, decode_batch, ring_view, start_decoders
from uiaa_cli.pixels.workers import available_cores
from uiaa_cli.progress import ProgressBar
from uiaa_cli.tables.formats import file_sha256
from uiaa_cli.tables.table import Table
from uiaa_cli.targets.labels import check_label_values


@dataclass
class CacheReport:
    """What a build did, for the summary line and the exit status."""

    total: int  # rows in the labels table
    stored: int  # images in the cache
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    carried: int = 0  # images finished by an earlier, interrupted run
    decoded: int = 0  # images decoded by this run
    seconds: float = 0.0  # wall time of the decoding
    workers: int = 1
    complete_already: bool = False  # --resume found OUT already finished: nothing was done
    store: str = "raw"  # how the pixels are kept (parse_store's form)


@dataclass(frozen=True)
class _Job:
    """What a build works from: the labels and their images, where it goes, how it keeps the pixels."""

    labels_path: str | os.PathLike
    labels: Table
    names: np.ndarray  # the labels' image column, as str
    root: str  # the image root, resolved
    out: Path
    size: int
    store: Store
    fingerprint: str  # what a partial build must share with this one to be resumed
    labels_digest: str  # the targets too: a finished cache is reused only if all match

    @property
    def part(self) -> Path:
        return partial_path(self.out)


def build_cache(
    labels_path: str | os.PathLike,
    images_root: str | os.PathLike | None,
    out_path: str | os.PathLike,
    size: int = 384,
    workers: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    store: str | Store | None = None,
) -> CacheReport:
    """Build the cache ``out_path`` from the images named in ``labels_path``.

    ``images_root`` defaults to the labels file's folder. ``store``: ``raw``, ``jpeg[:QUALITY]`` or
    ``png`` (see ``parse_store``; default ``DEFAULT_STORE``). ``progress``: a rich bar on stderr
    (None: only when stderr is a terminal). ``log`` receives one line per skipped image
    (default: stderr). Raises UiaaError for bad usage or input; skipped images are in the report.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    job = _prepare(labels_path, images_root, out_path, size, workers, store)
    names, part = job.names, job.part
    if part.exists() and not resume:
        raise UiaaError(f"an interrupted build is in {part}: add --resume to continue it, or delete it "
                        "to start again")
    report = CacheReport(total=len(names), stored=0, store=str(job.store))
    report.workers = max(1, min(workers or available_cores(), -(-len(names) // BATCH)))
    if resume and not part.exists() and job.out.is_file():
        finished = _finished_cache(job.out, job.fingerprint, job.labels_digest)
        if finished is not None:  # a finished build of the same labels, images and size: nothing to redo
            report.stored, report.skipped, report.complete_already = finished[0], finished[1], True
            return report
    # The workers are forked before any HDF5 file is open, so none of them holds it (or its lock)
    # and a killed build leaves nothing behind that keeps the partial file busy.
    pool, ring, slots = start_decoders(report.workers, job.root, size)
    try:
        start_writer = PartialCache.open if part.exists() else PartialCache.create
        writer = start_writer(part, len(names), size, job.fingerprint, job.store)
        try:
            report.carried = writer.committed
            todo = np.flatnonzero(~writer.done_mask())
            for row, reason in writer.skipped_rows():
                log(f"uiaa cache: skipped {names[row]}: {reason}")
            start = time.perf_counter()
            try:
                _decode_all(pool, ring, slots, todo, names, report.workers, writer, report, log, progress)
            except KeyboardInterrupt:
                log(f"uiaa cache: interrupted; {writer.committed:,} images are kept in {part}: run the same "
                    "command with --resume to continue")
                raise
            report.seconds = time.perf_counter() - start
            with _interrupts_deferred():  # finishing rewrites the file's structure: never stop halfway
                _finish(job, writer)
        finally:
            writer.close()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.stored = writer.committed
    report.skipped = [(str(names[r]), reason) for r, reason in writer.final_skipped]
    return report


def _prepare(labels_path: str | os.PathLike, images_root: str | os.PathLike | None, out_path: str | os.PathLike,
             size: int, workers: int | None, store: str | Store | None) -> _Job:
    """Check the arguments, read the labels and find their images' root: what the build works from."""
    if size < 8 or size > 4096:
        raise UiaaError(f"--size must lie in 8..4096, got {size}")
    if workers is not None and workers < 1:
        raise UiaaError(f"--workers must be at least 1, got {workers}")
    store = parse_store(store)
    if str(labels_path) == "-":
        raise UiaaError("the labels must be a file (its folder is the default image root)")
    labels, root = images.image_table(str(labels_path), images_root)
    check_label_values(labels, str(labels_path))  # refused now, not when training on it
    if not len(labels):
        raise UiaaError("no images: the labels table is empty", where=at(str(labels_path)))
    out = Path(out_path)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UiaaError("the cache is an HDF5 file: give it a .h5 name", where=at(str(out)))
    if not out.parent.is_dir():
        raise UiaaError("no such folder for the cache (create it first)", where=at(str(out.parent)))
    if out.is_dir():
        raise UiaaError("is a folder: give the cache a file name ending in .h5", where=at(str(out)))
    root_real = os.path.realpath(root)
    names = labels["image"].astype(str)
    return _Job(labels_path, labels, names, root_real, out, size, store,
                fingerprint=_fingerprint(names, size, root_real, store), labels_digest=file_sha256(labels_path))


def _finish(job: _Job, writer: PartialCache) -> None:
    """Write the tables and attributes, then give the finished file its final name."""
    store, part = job.store, job.part
    finished = writer.finish(job.labels, job.names, {
        "size": job.size, "mean": list(MEAN), "std": list(STD), "format": FORMAT,
        "layout": "NHWC uint8 RGB" if not store.encoded else f"{store.kind} files of SxS RGB",
        "store": store.kind, **({"quality": store.quality} if store.quality is not None else {}),
        "images_root": job.root, "labels": str(Path(job.labels_path).resolve()),
        "fingerprint": job.fingerprint, "labels_sha256": job.labels_digest,
    }, Path(str(job.out) + ".compacting"))
    writer.close()
    os.replace(finished, job.out)
    if finished != part:  # the compact copy is in place: the partial build has served
        part.unlink()


def _finished_cache(path: Path, fingerprint: str, labels_digest: str) -> tuple[int, list[tuple[str, str]]] | None:
    """(images stored, skipped) of a finished cache of the same names, root, size and labels file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)) or f.attrs.get("fingerprint") != fingerprint \
                    or f.attrs.get("labels_sha256") != labels_digest:
                return None
            return image_count(f), read_skipped(f)
    except (OSError, KeyError):
        return None


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _fingerprint(names: np.ndarray, size: int, root: str, store: Store) -> str:
    """What a partial build must share with this one to be resumed."""
    kept = f"{store}\0" if store.encoded else ""  # raw: as before stores existed, so old builds resume
    h = hashlib.sha256(f"{FORMAT}\0{size}\0{root}\0{len(names)}\0{kept}".encode())
    h.update("\0".join(names.tolist()).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _decode_all(pool: ProcessPoolExecutor, ring: Any, slots: int, todo: np.ndarray, names: np.ndarray,
                n_workers: int, writer: PartialCache, report: CacheReport, log: Callable[[str], None],
                progress: bool | None) -> None:
    """Decode ``todo`` rows in the pool's workers, writing each batch as it arrives, in order."""
    view = None if ring is None else ring_view(ring, writer.size)
    batches = enumerate(todo[a:b] for a, b in batch_bounds(len(todo), n_workers))
    pending: collections.deque[Future] = collections.deque()

    def submit() -> None:
        # At most ``slots`` batches in flight, so memory stays flat however slow the writer is;
        # batch i decodes into ring slot i % slots, free again once batch i - slots is written.
        for i, rows in itertools.islice(batches, 1):
            pending.append(pool.submit(decode_batch, (i % slots, str(writer.store),
                                                       [(int(r), str(names[r])) for r in rows])))

    bar = ProgressBar(progress, f"caching ({n_workers} worker{'s' if n_workers > 1 else ''})", len(names),
                      len(names) - len(todo), rate=True, transient=False)
    # A dead worker breaks the pool: a result and a submit then raise alike, whichever comes first.
    try:
        for _ in range(slots):
            submit()
        with bar:
            for i in itertools.count():
                if not pending:
                    break
                rows, lengths, data, skipped = pending.popleft().result()
                try:
                    if data is None:  # in the ring
                        data = view[i % slots, :len(rows)] if lengths is None else \
                            view[i % slots].reshape(-1)[:int(lengths.sum())]
                    writer.write(rows, data, skipped, lengths)
                except OSError as e:
                    raise UiaaError(f"cannot write the cache ({e}); {writer.committed:,} images are kept: "
                                    "run again with --resume", where=at(str(writer.f.filename))) from None
                submit()
                for row, reason in skipped:
                    line = f"uiaa cache: skipped {names[row]}: {reason}"
                    if not bar.line(line):
                        log(line)
                report.decoded += len(rows) + len(skipped)
                bar.advance(len(rows) + len(skipped))
    except BrokenProcessPool:
        raise UiaaError(f"a decoding process died (out of memory? a crash in an image decoder?); "
                        f"{writer.committed:,} images are kept: run again with --resume") from None
