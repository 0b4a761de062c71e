"""``uiaa predict``: score images with a trained checkpoint, batched, decoding in worker processes.

Inputs are image files, folders (recursive), ``-`` (paths on stdin), labels tables (their images,
resolved like ``uiaa cache`` does) and caches (their stored pixels). All become one list of inputs in
command-line order; a DataLoader decodes them in worker processes while the model scores the
previous batch. Preprocessing is training's: warp-resize to the checkpoint's size
(``images.decode_image``), then ``x / 255`` normalised with the checkpoint's mean and std.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank scores the inputs ``rank::world`` and rank 0
gathers the results and writes them in input order.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uiaa_cli.cache import is_cache
from uiaa_cli.engines import Engine
from uiaa_cli.errors import UiaaError, at
from uiaa_cli.images import image_table
from uiaa_cli.metrics import predicted_score
from uiaa_cli.tables import Table, write_table

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".h5", ".hdf5")


# ----------------------------------------------------------------------------------- the inputs


@dataclass
class Inputs:
    """Every input in order: ``names[i]`` (what the output calls it) and where its pixels come from.

    ``source[i]`` indexes ``sources``: ``("file", "")`` (``paths[i]`` is an image file),
    ``("table", ROOT)`` (``paths[i]`` is a labels table's image name, resolved under ROOT when it is
    decoded) or ``("cache", PATH)`` (``rows[i]`` is a row of that cache). Flat lists, not one object
    per image, so 10x the inputs cost 10x a few bytes; resolving and decoding happen in the workers.
    """

    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, kind: str, where: str, names: list[str], paths: list[str] | None = None) -> None:
        self.sources.append((kind, where))
        self.names += names
        self.paths += names if paths is None else paths
        self.source += [len(self.sources) - 1] * len(names)
        self.rows += list(range(len(names))) if kind == "cache" else [0] * len(names)


def collect_inputs(inputs: list[str], size: int, images: str | None = None) -> Inputs:
    """Expand the command line's inputs, in order (folders sorted, recursively)."""
    from uiaa_cli.images import list_images

    found = Inputs()
    for item in inputs:
        if item == "-":
            lines = [line.rstrip("\r\n") for line in sys.stdin]
            found.add("file", "", [line for line in lines if line.strip()])
        elif Path(item).is_dir():
            files = [str(p) for p in list_images(item)]
            if not files:
                raise UiaaError("no images in this folder", where=at(item))
            found.add("file", "", files)
        elif Path(item).suffix.lower() in TABLE_SUFFIXES and Path(item).is_file():
            add_table(found, item, size, images)
        else:  # an image file (a missing one fails when it is decoded, like any unreadable image)
            found.add("file", "", [item])
    return found


def add_table(found: Inputs, path: str, size: int, images: str | None) -> None:
    """A cache adds its stored pixels; a labels table adds its images, to be found under ``images``."""
    if is_cache(path):
        from uiaa_cli.cache import CacheReader

        with CacheReader(path) as reader:
            if reader.size != size:
                raise UiaaError(f"the cache holds {reader.size} px images and the model takes {size} px: "
                                "score its labels table with --images instead, or rebuild it with "
                                f"'uiaa cache --size {size}'", where=at(path))
            found.add("cache", path, reader.table["image"].astype(str).tolist())
        return
    table, root = image_table(path, images)
    found.add("table", str(root), table["image"].astype(str).tolist())


class InputImages(torch.utils.data.Dataset):
    """Decodes one input to uint8 ``(S, S, 3)`` in a worker; a failure is returned, never raised."""

    def __init__(self, inputs: Inputs, size: int) -> None:
        self.inputs, self.size = inputs, size
        self.readers: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        from uiaa_cli.images import ImageError, decode_image, resolve_image

        kind, where = self.inputs.sources[self.inputs.source[i]]
        try:
            if kind == "cache":
                pixels = self.reader(where).read(np.array([self.inputs.rows[i]]))[0]
            elif kind == "table":  # resolved here, in the worker: a name that escapes the root is refused
                pixels = decode_image(resolve_image(where, self.inputs.paths[i]), self.size)
            else:
                pixels = decode_image(self.inputs.paths[i], self.size)
            if not pixels.flags.writeable:  # Pillow's arrays are read-only; torch wants to own writable memory
                pixels = pixels.copy()
            return i, torch.from_numpy(np.ascontiguousarray(pixels)), None
        except (ImageError, UiaaError, OSError, ValueError) as e:
            return i, None, str(e) or type(e).__name__

    def reader(self, path: str) -> Any:
        """The cache's reader, opened on first use (CacheReader reopens the file in each worker)."""
        if path not in self.readers:
            from uiaa_cli.cache import CacheReader

            self.readers[path] = CacheReader(path)
        return self.readers[path]


def collate(samples: list[tuple[int, Tensor | None, str | None]]) -> tuple[np.ndarray, Tensor, list]:
    """A batch: indices of the decoded inputs, their pixels ``(B, S, S, 3)``, and ``(index, error)``s."""
    good = [s for s in samples if s[1] is not None]
    index = np.array([s[0] for s in good], dtype=np.int64)
    pixels = torch.stack([s[1] for s in good]) if good else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return index, pixels, [(s[0], s[2]) for s in samples if s[1] is None]


# ------------------------------------------------------------------------------------ predicting


@dataclass
class Batch:
    """Scores of one batch: input indices, score, std (NaN for 2-set), outputs."""

    index: np.ndarray
    score: np.ndarray
    std: np.ndarray
    probs: np.ndarray


def score_batches(engine: Engine, inputs: Inputs, order: np.ndarray, *, batch_size: int, workers: int,
                  on_error: Callable[[int, str], None]) -> Iterator[Batch]:
    """Score ``inputs[order]`` batch by batch, in that order, decoding ahead in ``workers`` processes."""
    config = engine.config
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(
        InputImages(inputs, int(config["size"])), batch_sampler=batches, num_workers=workers,
        collate_fn=collate, prefetch_factor=4 if workers else None,
        worker_init_fn=yield_to_model if engine.device == "cpu" else None,
    )
    bins = np.asarray(config["bins"], dtype=np.float64)
    iterator = iter(loader)
    try:
        for index, pixels, failures in iterator:
            for i, message in failures:
                on_error(i, message)
            if not len(index):  # every image of the batch failed
                empty = np.zeros(0)
                yield Batch(index, empty, empty, np.zeros((0, len(config["targets"]))))
                continue
            _, probs = engine(pixels.numpy())
            score, std = predicted_score(probs, bins)
            yield Batch(index, score, np.full(len(index), np.nan) if std is None else std, probs)
    finally:
        # Stop the workers now (e.g. when | head closed the pipe), not at interpreter exit.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def yield_to_model(worker_id: int) -> None:
    """Decode at a lower priority when the model runs on the same cores: decoding is a few percent of
    the work, and a decoder preempting one of the model's threads stalls all of them (they meet at
    barriers), so it should run in the model's gaps rather than compete with it."""
    with contextlib.suppress(OSError):
        os.nice(10)


def predictions_table(inputs: Inputs, batches: list[Batch], config: dict[str, Any], model: str) -> Table:
    """``image, score, std, p_*``: the table ``uiaa evaluate`` reads."""
    targets = list(config["targets"])
    merged = merge(batches) or Batch(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0),
                                     np.zeros((0, len(targets))))
    columns = {"image": np.array([inputs.names[i] for i in merged.index.tolist()], dtype=str),
               "score": merged.score, "std": merged.std}
    columns.update({name: merged.probs[:, j] for j, name in enumerate(targets)})
    attrs = {"uiaa": "predict", "model": str(model), "kind": config.get("kind"), "bins": config["bins"]}
    return Table(columns, attrs)


def write_lines(inputs: Inputs, batch: Batch) -> None:
    """``path<TAB>score`` lines for one batch, flushed at once (so ``| head`` returns at once)."""
    names = inputs.names
    text = "".join(f"{names[i]}\t{s:.4f}\n" for i, s in zip(batch.index.tolist(), batch.score.tolist()))
    sys.stdout.write(text)
    sys.stdout.flush()


@dataclass
class PredictResult:
    scored: int
    failed: int
    seconds: float


def run_predict(inputs_args: list[str], *, model: str | None, output: str | None, fmt: str | None,
                images: str | None, device: str, batch_size: int, workers: int | None,
                progress: bool, engine: str = "auto", precision: str | None = None,
                calibrate: str | None = None) -> PredictResult:
    """The whole of ``uiaa predict``; returns how many inputs were scored and how many failed."""
    import time

    if batch_size < 1:
        raise UiaaError("--batch-size must be at least 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    collected: dict[int, Inputs] = {}

    def inputs_at(size: int) -> Inputs:  # collected once: '-' reads stdin, which cannot be read twice
        if size not in collected:
            collected[size] = collect_inputs(inputs_args, size, images)
        return collected[size]

    scorer = open_scorer(model, engine, device, precision, calibrate, images, inputs_at)
    config, model_path = scorer.config, scorer.model
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if scorer.device.startswith("cuda") else "gloo")
    inputs = inputs_at(int(config["size"]))
    if not len(inputs):
        raise UiaaError("no inputs: give image files, folders, '-' (paths on stdin) or a labels/cache file")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    order = np.arange(rank, len(inputs), world)  # every rank its share, in input order

    failed = 0

    def on_error(i: int, message: str) -> None:
        nonlocal failed
        failed += 1
        name = inputs.names[i]
        # One line per bad input, naming it once (the decoder's message may already name the file).
        text = message if message.startswith((name, inputs.paths[i])) else f"{name}: {message}"
        print(f"uiaa predict: {text}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    batches = score_batches(scorer, inputs, order, batch_size=batch_size, workers=workers, on_error=on_error)
    keep: list[Batch] = []
    streaming = output is None and world == 1
    with progress_bar(len(order), progress and rank == 0) as advance:
        counted = 0  # failures already shown on the bar: a failed input is done too
        for batch in batches:
            if streaming:
                write_lines(inputs, batch)
            else:
                keep.append(batch)
            advance(len(batch.index) + failed - counted)
            counted = failed

    scored = sum(len(b.index) for b in keep) if not streaming else len(order) - failed
    if world > 1:
        import torch.distributed as dist

        keep, scored, failed = gather(keep, scored, failed, rank, world)
        dist.destroy_process_group()
        if rank != 0:
            return PredictResult(scored, 0, time.perf_counter() - start)  # rank 0 reports failures
    if not streaming:
        if output is None:
            for batch in keep:
                write_lines(inputs, batch)
        else:
            write_table(predictions_table(inputs, keep, config, str(model_path)), output, fmt)
    return PredictResult(scored, failed, time.perf_counter() - start)


def open_scorer(model: str | None, engine: str, device: str, precision: str | None, calibrate: str | None,
                images: str | None, inputs_at: Callable[[int], Inputs]) -> Engine:
    """The engine, in the precision asked for; a checkpoint without an int8 graph yet is calibrated
    on ``calibrate`` (a folder, cache or labels table) or else on the inputs themselves."""
    from uiaa_cli import quantize

    if calibrate is not None and precision != "int8":
        raise UiaaError("--calibrate goes with --precision int8")
    if calibrate is not None:
        calibration = quantize.Calibration(lambda size: quantize.calibration_pixels(calibrate, size, images),
                                           calibrate, fresh=True)
    else:
        calibration = quantize.Calibration(lambda size: input_pixels(inputs_at(size), size),
                                           "the inputs (spread over them)")
    return quantize.open_engine(model, engine, device, precision=precision, calibration=calibration)


def input_pixels(inputs: Inputs, size: int) -> np.ndarray:
    """Calibration images for an int8 model: inputs spread evenly over them, decoded as for scoring
    (those that fail are left out)."""
    from uiaa_cli.quantize import CALIBRATION_IMAGES, HELD_BACK_IMAGES, spread

    dataset = InputImages(inputs, size)
    decoded = [dataset[i][1] for i in spread(range(len(inputs)), CALIBRATION_IMAGES + HELD_BACK_IMAGES)]
    good = [np.asarray(p) for p in decoded if p is not None]
    return np.stack(good) if good else np.zeros((0, size, size, 3), dtype=np.uint8)


def gather(keep: list[Batch], scored: int, failed: int, rank: int,
           world: int) -> tuple[list[Batch], int, int]:
    """Rank 0 collects every rank's batches and puts them back in input order."""
    import torch.distributed as dist

    mine = (merge(keep), scored, failed)
    everyone: list[Any] = [None] * world if rank == 0 else None
    dist.gather_object(mine, everyone, dst=0)
    dist.barrier()
    if rank != 0:
        return [], scored, failed
    merged = merge([part[0] for part in everyone if part[0] is not None])
    if merged is not None:
        order = np.argsort(merged.index, kind="stable")
        merged = Batch(merged.index[order], merged.score[order], merged.std[order], merged.probs[order])
    return ([merged] if merged is not None else [], sum(p[1] for p in everyone), sum(p[2] for p in everyone))


def merge(batches: list[Batch]) -> Batch | None:
    if not batches:
        return None
    return Batch(*(np.concatenate([getattr(b, f) for b in batches]) for f in ("index", "score", "std", "probs")))


class progress_bar:
    """A rich progress bar on stderr when wanted; otherwise nothing (pipes and logs stay clean)."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show = total, show

    def __enter__(self) -> Callable[[int], None]:
        if not self.show:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True,
                            redirect_stdout=False)  # stdout carries the scores; stderr lines go above the bar
        self.bar.__enter__()
        task = self.bar.add_task("predict", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.bar.__exit__(*exc)
