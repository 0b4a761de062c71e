"""Training data: uint8 image batches from a cache (fast path) or decoded on the fly from a labels table.

A source yields ``(pixels, rows)`` per batch of row indices: ``pixels`` a uint8 ``(B, S, S, 3)``
tensor, ``rows`` the indices that were read (a table source drops images it cannot decode). Pixels
stay uint8 until ``Normalise`` runs on the training device, so a batch costs 1 byte per value to
read, copy and move; conversion to float, the flip and the normalisation happen as late as possible.

Every random choice is a function of ``(seed, epoch, step)``, not of a generator's history, so a run
resumed at any step draws the same batches and flips as one that was never stopped.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from uiaa_cli.pixels.cache import is_cache
from uiaa_cli.pixels.images import image_table
from uiaa_cli.tables.table import Table
from uiaa_cli.training.inputs import DataInput


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True, rank: int = 0,
                  world: int = 1) -> list[np.ndarray]:
    """The batches of row indices of one epoch, for one rank of ``world``.

    Shuffled by ``(seed, epoch)``; with several ranks the order is padded (by repeating its start)
    to a multiple of ``world`` and dealt out ``rank::world``, as ``DistributedSampler`` does. Each
    batch is sorted (HDF5 reads want increasing indices; the order within a batch does not matter).
    A last batch of one image is dropped: BatchNorm cannot train on it.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if world > 1:
        padded = -(-n // world) * world
        order = np.concatenate([order, order[: padded - n]])[rank::world]
    batches = [np.sort(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    if shuffle and batches and len(batches[-1]) == 1:
        batches.pop()
    return batches


def flip_mask(batch: int, seed: int, epoch: int, step: int, rank: int = 0) -> np.ndarray:
    """Which images of a batch to flip horizontally (each with probability 1/2)."""
    return np.random.default_rng([seed, epoch, step, rank, 1]).random(batch) < 0.5


class Normalise:
    """uint8 ``(B, S, S, 3)`` on any device -> normalised float ``(B, 3, S, S)`` on ``device``.

    The permuted view of an NHWC batch is already channels_last, which is what convolutions on
    CUDA prefer; on CPU the result is made contiguous (NCHW), which oneDNN runs faster here.
    """

    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool) -> None:
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.device = device
        self.channels_last = channels_last

    def __call__(self, pixels: Tensor, flip: np.ndarray | None = None) -> Tensor:
        x = pixels.to(self.device, non_blocking=True)
        if flip is not None and flip.any():
            mask = torch.from_numpy(flip).to(self.device).view(-1, 1, 1, 1)
            x = torch.where(mask, x.flip(2), x)
        x = x.permute(0, 3, 1, 2).float().mul_(self.scale).add_(self.shift)
        return x if self.channels_last else x.contiguous()


class Source:
    """Rows of a labels table and their pixels."""

    table: Table
    size: int
    bad: int = 0  # images that could not be decoded so far (each time one was tried)

    def take_failures(self) -> list[tuple[str, str]]:
        """(image, reason) of the images that failed to decode since the last call, each once."""
        return []

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[Tensor, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ArraySource(Source):
    """Pixels already in memory (tests, benchmarks)."""

    def __init__(self, pixels: np.ndarray, table: Table) -> None:
        self.pixels, self.table, self.size = pixels, table, pixels.shape[1]

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[Tensor, np.ndarray]]:
        for rows in batches:
            yield torch.from_numpy(self.pixels[rows]), rows


class CacheSource(Source):
    """A ``uiaa cache`` file: uint8 batches read ahead of the model.

    Raw pixels are read by a background thread (HDF5 reads release the GIL; a process would only
    add a copy). Encoded images (``--store jpeg/png``) are decoded by ``workers`` DataLoader
    processes, a whole batch per task, so decoding overlaps the model's step instead of adding to it.
    The processes start once and serve every epoch and validation pass (starting them cost 0.5-0.8 s
    each time on 2 cores: 10 % of a 512-image epoch).
    (torchvision's ``decode_jpeg`` on CPU gave the same pixels at the same speed as Pillow, which
    ``CacheReader`` already uses.) With ``decode_on`` (``--decode gpu``: a CUDA device) a jpeg cache's
    files are read by the background thread and decoded there, a batch per ``decode_jpeg`` call
    (nvJPEG), so the batch is born on the device; no worker process is started.
    """

    def __init__(self, path: str, pin_memory: bool = False, workers: int = 0,
                 decode_on: torch.device | None = None) -> None:
        from uiaa_cli.pixels.cache import CacheReader

        self.reader = CacheReader(path)
        self.reader.__enter__()
        self.table, self.size = self.reader.table, int(self.reader.size)
        self.pin_memory = pin_memory
        self.workers = workers
        self.loader: torch.utils.data.DataLoader | None = None
        self.order = EpochOrder()
        self.decode_on = decode_on

    @property
    def jpeg(self) -> bool:
        return self.reader.store.kind == "jpeg"

    def read(self, rows: np.ndarray) -> tuple[Tensor, np.ndarray]:
        pixels = torch.from_numpy(np.ascontiguousarray(self.reader.read(rows)))
        return (pixels.pin_memory() if self.pin_memory else pixels), rows

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[Tensor, np.ndarray]]:
        if self.decode_on is not None:
            return prefetch(self.decoded_on_device(rows) for rows in batches)
        if not self.reader.store.encoded or not self.workers:
            return prefetch(self.read(rows) for rows in batches)
        return self.decoded(list(batches))

    def decoded_on_device(self, rows: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """Images ``rows`` decoded by torchvision on ``decode_on``: uint8 ``(B, S, S, 3)`` there, laid out
        NHWC in memory as the other paths' batches (so ``Normalise`` gives channels_last)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        files = [torch.from_numpy(data) for data in self.jpeg_files(rows)]
        if self.decode_on.type == "cuda":
            # nvJPEG writes its output without waiting for the kernels queued on this stream, and the
            # caching allocator may hand it a block those kernels still read (pytorch/vision#9606).
            torch.cuda.current_stream(self.decode_on).synchronize()
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec, which has no batched nvJPEG decode yet
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(files, mode=ImageReadMode.RGB, device=self.decode_on)
        return torch.stack(images).permute(0, 2, 3, 1).contiguous(), rows

    def jpeg_files(self, rows: np.ndarray) -> list[np.ndarray]:
        """The stored JPEG files of ``rows`` (in that order): one HDF5 read per run of consecutive rows."""
        encoded, offsets = self.reader._images(), self.reader.offsets  # the bytes, opened in this process
        files: list[np.ndarray] = []
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            base = int(offsets[rows[start]])
            span = encoded[base:int(offsets[rows[stop - 1] + 1])]
            files += [span[int(offsets[i]) - base:int(offsets[i + 1]) - base] for i in rows[start:stop]]
        return files

    def decoded(self, batches: list[np.ndarray]) -> Iterator[tuple[Tensor, np.ndarray]]:
        if self.loader is None:
            self.loader = torch.utils.data.DataLoader(
                CachedBatches(self.reader), sampler=self.order, batch_size=None, num_workers=self.workers,
                pin_memory=self.pin_memory, prefetch_factor=2, persistent_workers=True,
                generator=torch.Generator().manual_seed(0),  # not the global RNG (see TableSource)
            )
        self.order.batches = batches  # read when the loop below starts the pass
        yield from zip(self.loader, batches, strict=True)

    def close(self) -> None:
        self.loader = None  # its iterator's finaliser stops the worker processes
        self.reader.__exit__(None, None, None)


class EpochOrder(torch.utils.data.Sampler):
    """The batches of the current pass, changed before each: a loader that keeps its processes
    across passes draws its order from one sampler object."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CachedBatches(torch.utils.data.Dataset):
    """Item ``rows`` (an array of indices) is those images of a cache, decoded: uint8 ``(B, S, S, 3)``."""

    def __init__(self, reader: object) -> None:
        self.reader = reader  # a CacheReader: it reopens the file in each worker process

    def __len__(self) -> int:
        return len(self.reader)  # type: ignore[arg-type]

    def __getitem__(self, rows: np.ndarray) -> Tensor:
        return torch.from_numpy(self.reader.read(rows))  # type: ignore[attr-defined]


class DecodedImages(torch.utils.data.Dataset):
    """Images of a labels table decoded and resized in DataLoader workers; a bad one is flagged."""

    def __init__(self, root: Path, names: np.ndarray, size: int) -> None:
        self.root, self.names, self.size = root, names, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        """The pixels and "" , or zeros and the reason the image could not be used."""
        from uiaa_cli.errors import UiaaError
        from uiaa_cli.pixels.images import ImageError, decode_image, resolve_image

        try:
            pixels = decode_image(resolve_image(self.root, str(self.names[i])), self.size)
        except (ImageError, UiaaError, OSError) as e:
            reason = e.message if isinstance(e, UiaaError) else str(e)
            return torch.zeros((self.size, self.size, 3), dtype=torch.uint8), reason or type(e).__name__
        return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()), ""


class TableSource(Source):
    """A labels table whose images are decoded on the fly by ``workers`` processes."""

    def __init__(self, table: Table, root: Path, size: int, workers: int, pin_memory: bool = False) -> None:
        self.table, self.size, self.workers, self.pin_memory = table, size, workers, pin_memory
        self.dataset = DecodedImages(root, table["image"], size)
        self.failed: dict[int, str] = {}  # row -> reason
        self.reported: set[int] = set()

    def take_failures(self) -> list[tuple[str, str]]:
        new = [row for row in self.failed if row not in self.reported]
        self.reported.update(new)
        return [(str(self.table["image"][row]), self.failed[row]) for row in new]

    def batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[Tensor, np.ndarray]]:
        batches = list(batches)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers else None,
            # Its own generator: worker seeds must not draw from the global RNG that dropout uses,
            # or a resumed run would diverge.
            generator=torch.Generator().manual_seed(0),
        )
        for rows, (pixels, reasons) in zip(batches, loader, strict=True):
            ok = np.array([not r for r in reasons], dtype=bool)
            if not ok.all():
                self.bad += int((~ok).sum())
                for row, reason in zip(rows[~ok], np.asarray(reasons, dtype=object)[~ok]):
                    self.failed[int(row)] = str(reason)
                pixels, rows = pixels[torch.from_numpy(ok)], rows[ok]
            yield pixels, rows


def open_source(path: str, *, images: str | None, size: int | None, workers: int,
                pin_memory: bool = False, checked: DataInput | None = None) -> Source:
    """A cache (HDF5 with an ``images`` dataset) or a labels table decoded from ``images``; ``checked``:
    the file as ``inputs.check_data`` already read it (its table is not read again)."""
    from uiaa_cli.errors import UiaaError, at

    if (checked is None or checked.cache) and is_cache(path):
        source = CacheSource(path, pin_memory, workers)
        if size is not None and size != source.size:
            source.close()
            raise UiaaError(f"the cache holds {source.size} px images, not --size {size}: omit --size or "
                            f"rebuild the cache with 'uiaa cache --size {size}'", where=at(path))
        return source
    table, root = (checked.table, checked.root) if checked is not None and not checked.cache \
        else image_table(path, images)
    return TableSource(table, root, size or 384, workers, pin_memory)


def prefetch(items: Iterator, depth: int = 3) -> Iterator:
    """Run ``items`` in a background thread, ``depth`` ahead of the consumer (HDF5 reads, numpy copies
    and pinning release the GIL for most of their time, so they overlap the model's step)."""
    done = object()
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # hand the error to the consumer
            put(e)

    thread = threading.Thread(target=work, daemon=True, name="uiaa-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
