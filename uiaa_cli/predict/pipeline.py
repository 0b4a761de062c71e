"""``uiaa predict``: inputs -> decoded batches -> engine -> output, streaming at any size.

- Inputs: :mod:`uiaa_cli.predict.inputs` (files, folders, ``-``, tar shards, tables, caches), produced
  lazily; ``--shard K/N`` keeps the inputs at positions ``K mod N`` (:func:`inputs.select_shard`).
- Decoding: :mod:`uiaa_cli.pixels.decoding`, worker processes a few batches ahead, in order.
- Scoring: an engine (``engines.open_engine``): uint8 pixels in, score and memberships out, through
  ``scorer.score_pixels``, the code :class:`uiaa_cli.predict.scorer.Scorer` (the Python API) runs.
- Output, as each batch finishes: ``path<TAB>score`` lines on stdout (names with tabs, newlines or
  backslashes escaped as ``\\t``, ``\\n``, ``\\\\``); ``-o -`` or a device/pipe: the table streamed;
  ``-o FILE``: the table built in committed parts in ``FILE.partial/`` (:mod:`uiaa_cli.tables.parts`)
  and joined into FILE at the end, so ``--resume`` continues a run stopped by Ctrl-C or ``kill -9``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank R of W scores every W-th input (of its ``--shard``);
with ``-o FILE`` each rank builds its own ``FILE.rank-R-of-W.partial/`` and rank 0 merges them into
FILE by streaming, in input order; without ``-o`` each rank writes its lines as its batches finish.
This module never imports torch (the ONNX engine runs without it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.evaluation import HEAD_COLUMNS, head_record
from uiaa_cli.predict.inputs import Input, open_inputs, parse_shard, select_shard
from uiaa_cli.progress import ProgressBar
from uiaa_cli.tables.formats import file_sha256
from uiaa_cli.tables.table import Table

COMMIT_SECONDS = float(os.environ.get("UIAA_COMMIT_SECONDS", 2.0))  # a kill loses at most this much work
COMMIT_ROWS = 100_000


@dataclass
class PredictResult:
    scored: int  # by this run (and rank)
    failed: int  # all failed inputs, earlier interrupted runs included
    seconds: float
    carried: int = 0  # scored by an interrupted run that --resume continued


def escape(name: str) -> str:
    """A name on one line of ``path<TAB>score``: backslash, tab, newline and return escaped."""
    if "\\" in name or "\t" in name or "\n" in name or "\r" in name:
        return name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return name


def run_predict(arguments: list[str], *, model: str | None, output: str | None, fmt: str | None,
                images: str | None, device: str, batch_size: int, workers: int | None, progress: bool,
                engine: str = "auto", shard: str | None = None, resume: bool = False, precision: str | None = None,
                calibrate: str | None = None, note: Callable[[str], None] | None = None) -> PredictResult:
    """The whole of ``uiaa predict``; see the module doc. ``note`` gets the lines for people (an export)."""
    if batch_size < 1:
        raise UiaaError("--batch-size must be at least 1")
    if workers is not None and workers < 0:
        raise UiaaError("--workers must be 0 or more")
    k, n = parse_shard(shard)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    from uiaa_cli.tables.outputs import is_special

    to_file = output not in (None, "-") and not is_special(output)
    if resume and not to_file:
        raise UiaaError("--resume continues an interrupted -o FILE: give the same -o FILE")
    if world > 1 and output is not None and not to_file:
        raise UiaaError("under torchrun, -o must be a file (each rank writes a part, rank 0 joins them)")
    if output is not None:
        from uiaa_cli.tables.table import table_format

        table_format(output, fmt)  # an unknown extension is an error before any work (cli checks the path)
    from uiaa_cli.models.calibration import calibration_for
    from uiaa_cli.models.engines import open_engine

    scorer = open_engine(model, engine, device, precision=precision,
                         calibration=calibration_for(arguments, images, calibrate, precision), note=note)
    config = scorer.config
    size = int(config["size"])
    inputs = open_inputs(arguments, size, images)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    targets = [str(t) for t in config["targets"]]
    # The head travels with the predictions, as attributes and as constant columns (plain CSV keeps no
    # attributes), so evaluate knows a binary score from a rating and raw linear outputs from p_*.
    head = head_record(config)
    columns = ["image"] + (["shard"] if inputs.has_shards else []) + ["score", "std"] + targets + list(head)
    checkpoint = str(getattr(scorer, "checkpoint", None) or scorer.model)
    attrs = {"uiaa": "predict", "model": checkpoint, "bins": config["bins"], "loss": config.get("loss"), **head,
             "config": json_safe(config)}
    # Job k of n, and rank r of w within it: the inputs at positions k + n r modulo n w.
    items = select_shard(iter(inputs), k + n * rank, n * world)

    if world > 1:
        init_distributed()
    start = time.perf_counter()
    if to_file:
        assert output is not None
        part_name = output if world == 1 else f"{output}.rank-{rank}-of-{world}"
        # The checkpoint's hash (not its exported graph's, which an export could rewrite); the engine
        # too, as the engines agree to 1e-4, not bit for bit.
        identity = {"model": file_sha256(checkpoint),
                    "inputs": inputs.arguments,
                    "options": {"shard": [k, n], "rank": [rank, world], "columns": columns, "engine": scorer.name}}
        sink: Sink = PartsSink(part_name, identity, resume, attrs)
    elif output is not None:
        sink = TableSink(output, fmt, attrs)
    else:
        sink = LinesSink()
    with output_lock(output if to_file and rank == 0 else None), \
            output_lock(f"{output}.rank-{rank}-of-{world}" if to_file and world > 1 else None):
        result = score_all(scorer, items, sink, columns, head, size=size, batch_size=batch_size, workers=workers,
                           progress=progress and rank == 0, inputs=inputs)
        result.seconds = time.perf_counter() - start
        if not (result.scored or result.failed or result.carried) and world == 1 and n == 1:  # a shard may be empty
            if isinstance(sink, PartsSink):
                sink.partial.remove()
            raise UiaaError("no inputs: nothing to score (an empty list on stdin, or shards with no samples?)")
        if world > 1:
            result = finish_distributed(result, output if to_file else None, fmt, attrs, columns, rank, world)
        elif to_file:
            assert isinstance(sink, PartsSink)
            from uiaa_cli.tables import parts

            with parts.kept_for_resume():
                parts.join([sink.partial], str(output), fmt, attrs, empty_rows(columns))
            sink.partial.remove()
    return result


def score_all(scorer: Any, items: Iterator[Input], sink: Sink, columns: list[str], head: dict[str, str], *,
              size: int, batch_size: int,
              workers: int, progress: bool, inputs: Any) -> PredictResult:
    """Decode, score and write every input of ``items``; failures are one line each on stderr."""
    from uiaa_cli.pixels.decoding import decoded_batches
    from uiaa_cli.predict.scorer import score_pixels

    names = hashlib.sha256()
    done, failed = sink.done, sink.failed
    carried = sink.carried
    items = sink.skip(items, names)
    scored = 0
    with ProgressBar(progress, "predict", remaining=False) as bar:
        try:
            for batch in decoded_batches(items, size, batch_size, workers):
                for position, message in batch.errors:
                    report_failure(batch.inputs[position], message)
                good = [batch.inputs[i] for i in batch.good.tolist()]
                if good:
                    score, std, probs = score_pixels(scorer, batch.pixels)  # the library's numbers (Scorer's)
                    rows = predictions(good, score, std, probs, columns, head)
                    sink.write(rows)
                    scored += len(good)
                for item in batch.inputs:
                    names.update(f"{item.index}\0{item.shard}\0{item.name}\n".encode("utf-8", "surrogatepass"))
                done += len(batch.inputs)
                failed += len(batch.errors)
                sink.batch_done(done, names.hexdigest(), failed)
                bar.advance(len(batch.inputs))
        except KeyboardInterrupt:
            sink.interrupted()
            raise
    sink.close(done, names.hexdigest(), failed)
    return PredictResult(scored, failed, 0.0, carried)


def predictions(good: list[Input], score: np.ndarray, std: np.ndarray, probs: np.ndarray,
                columns: list[str], head: dict[str, str]) -> Table:
    """One batch's rows: ``_index``, then the output's columns (the head's as constants)."""
    values: dict[str, np.ndarray] = {"_index": np.array([item.index for item in good], dtype=np.int64),
                                     "image": np.array([item.name for item in good], dtype=str)}
    if "shard" in columns:
        values["shard"] = np.array([item.shard for item in good], dtype=str)
    values["score"], values["std"] = score, std
    for j, name in enumerate(c for c in columns[columns.index("std") + 1:] if c not in head):
        values[name] = probs[:, j]
    for name, value in head.items():
        values[name] = np.full(len(good), value)
    return Table(values)


def utf8_names(rows: Table, reported: set[str]) -> Table:
    """``rows`` with names fit for a table: a file name that is not UTF-8 (its undecodable bytes are
    surrogates in Python) gets ``\\xNN`` escapes, with a line on stderr (once per name: ``reported``),
    since CSV, Parquet and HDF5 hold UTF-8 text (``path<TAB>score`` lines keep the raw bytes, as
    ``find`` does). A literal backslash in a name is left as it is, so the escape can be ambiguous."""
    for column in ("image", "shard"):
        if column not in rows:
            continue
        values = rows[column].tolist()
        try:
            "".join(values).encode("utf-8")
            continue
        except UnicodeEncodeError:
            pass
        fixed = [as_utf8(v) for v in values]
        shards = rows["shard"].tolist() if column == "image" and "shard" in rows else [""] * len(values)
        for before, after, shard in zip(values, fixed, shards):
            where = f"{as_utf8(shard)}: {after}" if shard else after
            if before != after and where not in reported:
                reported.add(where)
                what = "shard's name" if column == "shard" else "name"
                print(f"uiaa predict: {escape(where)}: the {what} is not UTF-8; the table holds it with \\xNN escapes",
                      file=sys.stderr, flush=True)
        rows = Table({**rows.columns, column: np.array(fixed, dtype=str)}, dict(rows.attrs))
    return rows


def empty_rows(columns: list[str]) -> Table:
    return Table({"_index": np.zeros(0, dtype=np.int64),
                  **{c: np.zeros(0, dtype=str) if c in ("image", "shard", *HEAD_COLUMNS) else np.zeros(0)
                     for c in columns}})


def report_failure(item: Input, message: str) -> None:
    """One line on stderr for an input that could not be scored, naming it (and its shard) once."""
    if item.shard:
        where = f"{item.shard}: {item.name}" if item.name else item.shard
    else:
        where = item.name
    text = message if message.startswith(where) else f"{where}: {message}"
    print(f"uiaa predict: {escape(as_utf8(text))}", file=sys.stderr, flush=True)


def as_utf8(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogates in Python) as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------- outputs


class Sink:
    """Where rows go. ``done``/``failed``/``carried``: what an interrupted run already finished."""

    done = failed = carried = 0

    def skip(self, items: Iterator[Input], names: Any) -> Iterator[Input]:
        return items

    def write(self, rows: Table) -> None:
        raise NotImplementedError

    def batch_done(self, done: int, names: str, failed: int) -> None:
        pass

    def interrupted(self) -> None:
        pass

    def close(self, done: int, names: str, failed: int) -> None:
        pass


class LinesSink(Sink):
    """``path<TAB>score`` lines on stdout, flushed per batch (``| head`` returns at once)."""

    def write(self, rows: Table) -> None:
        names = rows["image"].tolist()
        if "shard" in rows:  # a shard's sample: SHARD/KEY, as if the tar were a folder
            names = [f"{s}/{k}" for s, k in zip(rows["shard"].tolist(), names)]
        text = "".join(f"{escape(name)}\t{s:.4f}\n" for name, s in zip(names, rows["score"].tolist()))
        # As bytes: a name that is not UTF-8 goes out as it is on disk, whatever stdout's encoding
        # (a stdout without bytes underneath, as when called from Python, takes the text).
        raw = getattr(sys.stdout, "buffer", None)
        if raw is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            raw.write(os.fsencode(text))
            raw.flush()


class TableSink(Sink):
    """The table streamed to stdout (``-o -``) or written through to a device or named pipe."""

    def __init__(self, output: str, fmt: str | None, attrs: dict[str, Any]) -> None:
        from uiaa_cli.tables.writers import TableWriter

        self.writer = TableWriter(output, fmt).__enter__()
        self.attrs = attrs
        self.started = False
        self.reported: set[str] = set()

    def write(self, rows: Table) -> None:
        from uiaa_cli.tables.parts import without_index

        self.writer.write(without_index(utf8_names(rows, self.reported), self.attrs))
        self.started = True

    def close(self, done: int, names: str, failed: int) -> None:
        self.writer.__exit__(None, None, None)

    def interrupted(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)


class PartsSink(Sink):
    """Rows committed to ``OUTPUT.partial/`` every few seconds (see :mod:`uiaa_cli.tables.parts`)."""

    def __init__(self, output: str, identity: dict[str, Any], resume: bool, attrs: dict[str, Any]) -> None:
        from uiaa_cli.tables.parts import PartialTable, partial_path

        self.partial = PartialTable.start(partial_path(output), identity, resume)
        self.done, self.failed, self.carried = self.partial.done, self.partial.failed, self.partial.rows
        self.last_commit = time.monotonic()
        self.pending_rows = 0
        self.reported: set[str] = set()
        self.state = (self.done, self.partial.manifest["names"], self.failed)

    def skip(self, items: Iterator[Input], names: Any) -> Iterator[Input]:
        """Pass over the inputs an interrupted run finished, checking they are the same ones."""
        if not self.done:
            yield from items
            return
        seen = 0
        for item in items:
            if seen < self.done:
                names.update(f"{item.index}\0{item.shard}\0{item.name}\n".encode("utf-8", "surrogatepass"))
                seen += 1
                if seen == self.done:
                    self._check(names.hexdigest())
                continue
            yield item
        if seen < self.done:
            self._check(None)

    def _check(self, digest: str | None) -> None:
        if digest != self.partial.manifest["names"]:
            raise UiaaError(f"the inputs differ from the interrupted run's (its first {self.done:,} inputs are not "
                            "the same): resume with the same inputs, or delete it to start again",
                            where=str(self.partial.folder))

    def write(self, rows: Table) -> None:
        self.partial.append(utf8_names(rows, self.reported))
        self.pending_rows += len(rows)

    def batch_done(self, done: int, names: str, failed: int) -> None:
        self.state = (done, names, failed)
        if time.monotonic() - self.last_commit >= COMMIT_SECONDS or self.pending_rows >= COMMIT_ROWS:
            self._commit()

    def _commit(self) -> None:
        self.partial.commit(*self.state)
        self.last_commit, self.pending_rows = time.monotonic(), 0

    def interrupted(self) -> None:
        self._commit()  # the batches finished before Ctrl-C are kept
        print(f"uiaa predict: interrupted; {self.partial.rows:,} scores are kept in {self.partial.folder}: run the "
              "same command with --resume to continue", file=sys.stderr, flush=True)

    def close(self, done: int, names: str, failed: int) -> None:
        self.state = (done, names, failed)
        self._commit()
        self.partial.finish()


# ---------------------------------------------------------------------------------- torchrun


def init_distributed() -> None:
    """A gloo process group, only to wait for every rank at the end (results never travel through it)."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        # Long timeout: a resumed rank may have far less left to do than the others.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))


def finish_distributed(result: PredictResult, output: str | None, fmt: str | None, attrs: dict[str, Any],
                       columns: list[str], rank: int, world: int) -> PredictResult:
    """Wait for every rank; rank 0 merges the ranks' parts into ``output`` and sums the counts."""
    import torch
    import torch.distributed as dist

    counts = torch.tensor([result.scored, result.failed, result.carried], dtype=torch.int64)
    dist.all_reduce(counts)  # also the barrier: every rank has finished its part
    try:
        if rank == 0 and output is not None:
            from uiaa_cli.tables import parts

            partials = [parts.PartialTable(parts.partial_path(f"{output}.rank-{r}-of-{world}"),
                                           parts.read_manifest(parts.partial_path(f"{output}.rank-{r}-of-{world}")))
                        for r in range(world)]
            with parts.kept_for_resume():
                parts.join(partials, output, fmt, attrs, empty_rows(columns))
            for partial in partials:
                partial.remove()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return result  # its own failures were its own lines; rank 0 gives the totals
    scored, failed, carried = (int(v) for v in counts.tolist())
    return PredictResult(scored, failed, result.seconds, carried)


# ---------------------------------------------------------------------------------- helpers


def output_lock(path: str | None) -> Any:
    """The lock on building ``path`` (None: nothing to lock)."""
    if path is None:
        return contextlib.nullcontext()
    from uiaa_cli.tables.outputs import output_lock as lock

    return lock(path)


def json_safe(value: Any) -> Any:
    """A checkpoint's config as plain JSON values (for the output's metadata)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
