"""``uiaa cache``: decode every image of a labels table once into one HDF5 file, and read it back.

Layout of a finished cache (attributes on the root unless said otherwise); ``--store`` picks how
the pixels are kept::

    raw:     images   uint8 (N, S, S, 3) RGB, one image per chunk, no HDF5 compression
    jpeg/png: encoded uint8 (B,), the N images' files (JPEG or PNG of the S x S pixels), one after
                      another, contiguous; image i is ``encoded[offsets[i]:offsets[i + 1]]``
              offsets int64 (N + 1,)
    table/   the labels table of the N images that made it in, in the same order as the images
             (``uiaa convert cache.h5 x.csv`` and ``tables.read_table`` read it)
    skipped/ a table: image, reason, for every image left out
    attrs    store ("raw", "jpeg" or "png"), quality (jpeg), size, mean, std (ImageNet normalisation
             for train), layout, images_root, labels, complete=True (set last; the file only gets its
             final name once complete)

``CacheReader.read`` returns uint8 (B, S, S, 3) pixels whatever the store, so nothing else needs to
know. Why one flat byte array and offsets rather than an HDF5 variable-length dataset: it is written
into space allocated when the build starts (the property the build's safety rests on, below), while
each variable-length write changes HDF5's global heap; and it reads 2.5-4x faster (0.18 against
0.79 ms per 75 KB image, batches of 32 random images, on a loaded 2-core VM;
benchmarks/bench_cache_store.py).

Building (``build_cache``): forked worker processes resolve and decode batches of 16 images into a
shared-memory ring (pickling 442 KB per image through a pipe cost the writer more CPU than the
HDF5 write itself); the main process only writes, batch by batch in labels order, with at most
``workers + 2`` batches in flight, so memory stays flat. Work goes to ``OUT.partial``, an HDF5 file
whose every dataset is allocated in full at creation, so that afterwards only raw bytes change,
never HDF5's internal structure: a build killed at any moment leaves a readable partial file. The
count of finished images (``committed``) is written only after their pixels have been flushed, so
``--resume`` trusts exactly what was finished and decodes the rest. The end shrinks ``images`` to
the images kept, writes the tables and attributes, and renames the file to its final name.

An encoded store (jpeg, png) keeps the same rules: each worker encodes the images it has just
resized, into its slot of the ring; the partial file holds a byte ``pool`` allocated at creation
(as large as the raw pixels would be, which costs no disk on file systems with sparse files, as raw
does), the images' ``offsets`` and the same bookkeeping, and ``committed`` is written only after
the bytes and offsets it vouches for are flushed. A resumed build therefore appends after
``offsets[committed]``, byte for byte as an uninterrupted one would. The end copies the used part
of the pool into a new, compact file (HDF5 does not reliably give back the space of a shrunken
dataset) and renames that; the partial file is deleted only after the rename.
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
from uiaa_cli.pixels.workers import CAN_FORK, available_cores, start_pool
from uiaa_cli.tables.formats import file_sha256
from uiaa_cli.tables.table import TABLE_GROUP, Table, is_hdf5, read_table, write_h5_group
from uiaa_cli.targets.labels import check_label_values

MEAN = (0.485, 0.456, 0.406)  # ImageNet, what torchvision's pretrained weights expect
STD = (0.229, 0.224, 0.225)
SKIPPED_GROUP = "skipped"
FORMAT = "uiaa-cache-1"
BATCH = 16  # images per task: amortises the hand-over between processes, keeps workers balanced
REASON_BYTES = 256
ROW_CHUNK = 4096
STORES = ("raw", "jpeg", "png")
DEFAULT_STORE = "jpeg"
JPEG_QUALITY = 95
POOL_SLACK = 1024  # bytes per image beyond raw pixels that the partial pool allows (headers of tiny images)


def partial_path(out: str | os.PathLike) -> Path:
    """Where an unfinished build of ``out`` lives."""
    return Path(str(out) + ".partial")


@dataclass(frozen=True)
class Store:
    """How a cache keeps its pixels: ``raw`` uint8, or each image re-encoded as ``jpeg`` or ``png``."""

    kind: str = "raw"
    quality: int | None = None  # jpeg only

    def __str__(self) -> str:
        return f"{self.kind}:{self.quality}" if self.quality is not None else self.kind

    @property
    def encoded(self) -> bool:
        return self.kind != "raw"


def parse_store(text: str | Store | None) -> Store:
    """``raw``, ``png``, ``jpeg`` or ``jpeg:QUALITY`` (1-100, default 95)."""
    if isinstance(text, Store):
        return text
    kind, _, quality = (text or DEFAULT_STORE).strip().lower().partition(":")
    if kind not in STORES:
        raise UiaaError(f"--store must be raw, jpeg, jpeg:QUALITY or png, got {text!r}")
    if kind != "jpeg":
        if quality:
            raise UiaaError(f"--store {kind} takes no quality, got {text!r}")
        return Store(kind)
    try:
        q = int(quality) if quality else JPEG_QUALITY
    except ValueError:
        q = -1
    if not 1 <= q <= 100:
        raise UiaaError(f"--store jpeg:QUALITY needs a whole number in 1..100, got {text!r}")
    return Store("jpeg", q)


def encode_pixels(pixels: np.ndarray, store: Store) -> bytes:
    """One (S, S, 3) uint8 image as the file ``store`` keeps: JPEG without chroma subsampling
    (4:4:4: 4:2:0 subsampling halves the colour resolution and cost 4-6 dB of PSNR at quality 95
    on our test photos, for 20-25 % fewer bytes), or PNG at zlib level 1 (lossless; the fastest
    level, as PNG encoding is already the slowest part of a png build)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(pixels, "RGB")
    if store.kind == "jpeg":
        im.save(buf, "JPEG", quality=store.quality, subsampling=0, optimize=True)
    else:
        im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def decode_pixels(data: bytes | np.ndarray, out: np.ndarray) -> None:
    """Decode one stored image into ``out`` (S, S, 3) uint8; ValueError if it is not that."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode != "RGB" or im.size != (out.shape[1], out.shape[0]):
            raise ValueError(f"a stored image is {im.mode} {im.size[0]}x{im.size[1]}, not RGB "
                             f"{out.shape[1]}x{out.shape[0]}")
        out[...] = np.asarray(im)


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


# ---------------------------------------------------------------------------------- workers

_ROOT = ""
_SIZE = 0
_RING: np.ndarray | None = None  # (slots, BATCH, S, S, 3) shared with the parent, where fork is available


def _init_worker(root: str, size: int, ring: Any) -> None:
    global _ROOT, _SIZE, _RING
    _ROOT, _SIZE = root, size
    _RING = None if ring is None else _ring_view(ring, size)


Decoded = tuple[list[int], "np.ndarray | None", "np.ndarray | None", list[tuple[int, str]]]


def _decode_batch(task: tuple[int, str, list[tuple[int, str]]]) -> Decoded:
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


def _ring_view(ring: Any, size: int) -> np.ndarray:
    return np.frombuffer(ring, dtype=np.uint8).reshape(-1, BATCH, size, size, 3)


# ---------------------------------------------------------------------------------- building


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
    fingerprint = _fingerprint(names, size, root_real, store)
    labels_digest = file_sha256(labels_path)  # the targets too: a finished cache is reused only if all match

    part = partial_path(out)
    if part.exists() and not resume:
        raise UiaaError(f"an interrupted build is in {part}: add --resume to continue it, or delete it "
                        "to start again")
    report = CacheReport(total=len(names), stored=0, store=str(store))
    report.workers = max(1, min(workers or available_cores(), -(-len(names) // BATCH)))
    if resume and not part.exists() and out.is_file():
        finished = _finished_cache(out, fingerprint, labels_digest)
        if finished is not None:  # a finished build of the same labels, images and size: nothing to redo
            report.stored, report.skipped, report.complete_already = finished[0], finished[1], True
            return report
    # The workers are forked before any HDF5 file is open, so none of them holds it (or its lock)
    # and a killed build leaves nothing behind that keeps the partial file busy.
    pool, ring, slots = _start_pool(report.workers, root_real, size)
    try:
        writer = _PartialCache.open(part, len(names), size, fingerprint, store) if part.exists() else \
            _PartialCache.create(part, len(names), size, fingerprint, store)
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
                finished = writer.finish(labels, names, {
                    "size": size, "mean": list(MEAN), "std": list(STD), "format": FORMAT,
                    "layout": "NHWC uint8 RGB" if not store.encoded else f"{store.kind} files of SxS RGB",
                    "store": store.kind, **({"quality": store.quality} if store.quality is not None else {}),
                    "images_root": root_real, "labels": str(Path(labels_path).resolve()),
                    "fingerprint": fingerprint, "labels_sha256": labels_digest,
                }, Path(str(out) + ".compacting"))
                writer.close()
                os.replace(finished, out)
                if finished != part:  # the compact copy is in place: the partial build has served
                    part.unlink()
        finally:
            writer.close()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.stored = writer.committed
    report.skipped = [(str(names[r]), reason) for r, reason in writer.final_skipped]
    return report


def _finished_cache(path: Path, fingerprint: str, labels_digest: str) -> tuple[int, list[tuple[str, str]]] | None:
    """(images stored, skipped) of a finished cache of the same names, root, size and labels file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)) or f.attrs.get("fingerprint") != fingerprint \
                    or f.attrs.get("labels_sha256") != labels_digest:
                return None
            return _image_count(f), _read_skipped(f)
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


def _start_pool(n_workers: int, root: str, size: int) -> tuple[ProcessPoolExecutor, Any, int]:
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


def _batch_bounds(n: int, n_workers: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch: BATCH images, shrinking near the end so that the workers
    finish together instead of one decoding a last full batch while the others wait."""
    start = 0
    while start < n:
        stop = start + min(BATCH, -(-(n - start) // (2 * n_workers)))
        yield start, stop
        start = stop


def _decode_all(pool: ProcessPoolExecutor, ring: Any, slots: int, todo: np.ndarray, names: np.ndarray,
                n_workers: int, writer: _PartialCache, report: CacheReport, log: Callable[[str], None],
                progress: bool | None) -> None:
    """Decode ``todo`` rows in the pool's workers, writing each batch as it arrives, in order."""
    view = None if ring is None else _ring_view(ring, writer.size)
    batches = enumerate(todo[a:b] for a, b in _batch_bounds(len(todo), n_workers))
    pending: collections.deque[Future] = collections.deque()

    def submit() -> None:
        # At most ``slots`` batches in flight, so memory stays flat however slow the writer is;
        # batch i decodes into ring slot i % slots, free again once batch i - slots is written.
        for i, rows in itertools.islice(batches, 1):
            pending.append(pool.submit(_decode_batch, (i % slots, str(writer.store),
                                                       [(int(r), str(names[r])) for r in rows])))

    for _ in range(slots):
        submit()
    bar = _Progress(progress, len(names), len(names) - len(todo), n_workers)
    with bar:
        for i in itertools.count():
            if not pending:
                break
            try:
                rows, lengths, data, skipped = pending.popleft().result()
            except BrokenProcessPool:
                raise UiaaError(f"a decoding process died (out of memory? a crash in an image decoder?); "
                                f"{writer.committed:,} images are kept: run again with --resume") from None
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
                bar.print(f"uiaa cache: skipped {names[row]}: {reason}", log)
            report.decoded += len(rows) + len(skipped)
            bar.advance(len(rows) + len(skipped))


class _Progress:
    """A rich progress bar with images/s on stderr, or nothing."""

    def __init__(self, enabled: bool | None, total: int, completed: int, workers: int) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress: Any = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn(f"caching ({workers} worker{'s' if workers > 1 else ''})"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[rate]} images/s"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self.task = self.progress.add_task("cache", total=total, completed=completed, rate="-")

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, rate=f"{speed:.0f}" if speed else "-")

    def print(self, line: str, log: Callable[[str], None]) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            log(line)


class _PartialCache:
    """``OUT.partial``: the build in progress, safe to kill at any moment (see the module doc)."""

    def __init__(self, f: Any, size: int, store: Store) -> None:
        self.f = f
        self.size = size
        self.store = store
        if store.encoded:
            self.pool = f["pool"]  # the encoded images, one after another
            self.offsets = f["offsets"]  # image i is pool[offsets[i]:offsets[i + 1]]
        else:
            self.images = f["images"]
        self.rows = f["rows"]  # label row of each stored image
        self.status = f["status"]  # per label row: 2 = skipped
        self.reasons = f["reasons"]  # per label row: why it was skipped
        self.committed = int(f["committed"][0])  # images whose pixels are safely written
        self.end = int(self.offsets[self.committed]) if store.encoded else 0  # bytes of the committed images
        self.final_skipped: list[tuple[int, str]] = []

    @classmethod
    def create(cls, path: Path, n: int, size: int, fingerprint: str, store: Store) -> _PartialCache:
        import h5py

        # No HDF5 chunk cache: each image chunk is written once, whole, and going through the cache
        # cost 3x the CPU of the write itself (0.46 against 0.15 ms per image).
        try:
            f = h5py.File(path, "w", rdcc_nbytes=0)
        except OSError as e:
            raise UiaaError(f"cannot create the cache ({_reason(e)})", where=at(str(path))) from None
        try:
            f.attrs["format"] = FORMAT + "-partial"
            f.attrs["fingerprint"] = fingerprint
            f.attrs["size"] = size
            f.attrs["store"] = str(store)
            f.attrs["complete"] = False
            rows = min(n, ROW_CHUNK)
            if store.encoded:
                # Room for every image at its raw size and more: never written bytes cost no disk
                # where files can be sparse, and the finished cache is a compact copy.
                _allocated(f, "pool", (n * (size * size * 3 + POOL_SLACK),), np.uint8, None, fill=False)
                _allocated(f, "offsets", (n + 1,), np.int64, (min(n + 1, ROW_CHUNK),), fill=True)
            else:
                _allocated(f, "images", (n, size, size, 3), np.uint8, (1, size, size, 3), fill=False)
            _allocated(f, "rows", (n,), np.int64, (rows,), fill=True)
            _allocated(f, "status", (n,), np.uint8, (rows,), fill=True)
            _allocated(f, "reasons", (n,), f"S{REASON_BYTES}", (min(n, 256),), fill=True)
            _allocated(f, "committed", (1,), np.int64, (1,), fill=True)
            f.flush()
        except BaseException:
            f.close()
            raise
        return cls(f, size, store)

    @classmethod
    def open(cls, path: Path, n: int, size: int, fingerprint: str, store: Store) -> _PartialCache:
        import h5py

        try:
            f = h5py.File(path, "r+", rdcc_nbytes=0)
        except OSError as e:
            raise UiaaError(f"the interrupted build cannot be read ({e}); delete it to start again",
                            where=at(str(path))) from None
        if f.attrs.get("fingerprint") != fingerprint or "committed" not in f or len(f["status"]) != n:
            f.close()
            raise UiaaError("the interrupted build was for other labels, images, --size or --store; delete it "
                            "to start again", where=at(str(path)))
        return cls(f, size, store)

    def done_mask(self) -> np.ndarray:
        """Label rows that need no more work: stored, or skipped with a recorded reason."""
        done = np.zeros(len(self.status), dtype=bool)
        done[self.rows[: self.committed]] = True
        done[[row for row, _ in self.skipped_rows()]] = True
        return done

    def skipped_rows(self) -> list[tuple[int, str]]:
        status = self.status[()]
        rows = np.flatnonzero(status == 2)
        reasons = self.reasons[rows] if len(rows) else []
        # A reason lost to a kill mid-flush means the image is simply tried again.
        return [(int(r), b.decode("utf-8", "replace")) for r, b in zip(rows, reasons) if b]

    @property
    def skipped_count(self) -> int:
        return len(self.skipped_rows())

    def write(self, rows: list[int], data: np.ndarray, skipped: list[tuple[int, str]],
              lengths: np.ndarray | None = None) -> None:
        """Store a batch: ``data`` is the pixels (raw) or the images' bytes end to end, ``lengths``
        long (encoded stores)."""
        c, k = self.committed, len(rows)
        if k and self.store.encoded:
            assert lengths is not None
            end = self.end + int(lengths.sum())
            if end > len(self.pool):
                raise UiaaError(f"the {self.store.kind} images take more room than raw pixels would; "
                                "use --store raw", where=at(str(self.f.filename)))
            self.pool[self.end:end] = data
            self.offsets[c + 1:c + k + 1] = self.end + np.cumsum(lengths)
            self.rows[c:c + k] = rows
        elif k:
            self.images[c:c + k] = data
            self.rows[c:c + k] = rows
        for row, reason in skipped:
            self.reasons[row] = reason.encode("utf-8", "replace")[:REASON_BYTES]
            self.status[row] = 2
        self.f.flush()  # pixels first, then the count that vouches for them
        if k:
            self.committed = c + k
            self.end = int(self.offsets[self.committed]) if self.store.encoded else 0
            self.f["committed"][0] = self.committed
            self.f.flush()

    def finish(self, labels: Table, names: np.ndarray, attrs: dict[str, Any], compact: Path) -> Path:
        """Shrink to the images kept, write the tables and attributes, mark complete; returns the
        finished file: this one (raw), or ``compact``, a new file holding only the bytes kept."""
        import h5py

        f, c = self.f, self.committed
        kept = self.rows[:c]
        self.final_skipped = self.skipped_rows()
        if self.store.encoded:
            try:
                out = h5py.File(compact, "w")
            except OSError as e:
                raise UiaaError(f"cannot create the cache ({_reason(e)})", where=at(str(compact))) from None
            try:
                encoded = out.create_dataset("encoded", shape=(self.end,), dtype=np.uint8, track_times=False)
                step = 64 << 20  # copied in blocks: memory stays flat
                for start in range(0, self.end, step):
                    encoded[start:start + step] = self.pool[start:min(start + step, self.end)]
                out.create_dataset("offsets", data=self.offsets[:c + 1], track_times=False)
                self._finish_tables(out, labels, names, kept, attrs)
            except BaseException:
                out.close()
                compact.unlink(missing_ok=True)
                raise
            out.close()
            return compact
        self.images.resize((c, self.size, self.size, 3))
        for name in ("rows", "status", "reasons", "committed"):
            del f[name]
        self._finish_tables(f, labels, names, kept, attrs)
        return Path(f.filename)

    def _finish_tables(self, f: Any, labels: Table, names: np.ndarray, kept: np.ndarray,
                       attrs: dict[str, Any]) -> None:
        write_h5_group(f, labels.take(kept), TABLE_GROUP)
        skipped = Table({
            "image": np.array([str(names[r]) for r, _ in self.final_skipped], dtype=str),
            "reason": np.array([reason for _, reason in self.final_skipped], dtype=str),
        })
        write_h5_group(f, skipped, SKIPPED_GROUP)
        for key, value in attrs.items():
            f.attrs[key] = value
        f.flush()
        f.attrs["complete"] = True

    def close(self) -> None:
        if self.f:  # an h5py File is falsy once closed
            self.f.close()


def _reason(e: BaseException) -> str:
    """The useful first line of an (h5py) OSError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _allocated(f: Any, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None,
               fill: bool) -> None:
    """A dataset (chunked, or contiguous if ``chunks`` is None) whose every byte is allocated now, so
    later writes never change the file's structure (only raw bytes). ``fill``: write zeros now
    (else the bytes are undefined)."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, maxshape=shape if chunks else None,
                     dcpl=dcpl, fill_time="alloc" if fill else "never", track_times=False)


# ---------------------------------------------------------------------------------- reading


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


def _image_count(f: Any) -> int:
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
        self.skipped = _read_skipped(f)
        if len(self.table) != _image_count(f):
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


def _read_skipped(f: Any) -> list[tuple[str, str]]:
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
