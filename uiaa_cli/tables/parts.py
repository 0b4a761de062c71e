"""A table built in committed parts, so that a run killed at any moment can be resumed.

``FILE.partial/`` (a folder beside the final output) holds ``part-NNNNNN.npz`` files and a
small ``manifest.json``: what the run is (the model's SHA-256, the inputs, the options), the parts
committed so far, and how many inputs they account for (``done``, scored or failed) with the
SHA-256 of those inputs' names (``names``). A part is written under a temporary name and renamed
(``outputs.atomic_output``); then the manifest is rewritten the same way: whatever the moment of a
``kill -9``, the manifest names only complete parts, and a part it does not name is a leftover to
delete. On ``--resume`` the inputs are enumerated again, the first ``done`` are skipped once their names hash to
``names`` (otherwise the inputs have changed: an error), and the run goes on from there. At the
end the parts are joined, streaming, into the final file (written atomically), and the folder is
removed: nothing incomplete ever sits under the final name.

Parts are compressed numpy archives, not Parquet: they are written while the decoding workers run,
and loading arrow's library then would add ~50 MiB to predict's process for the rest of the run;
arrow is loaded for the join, after the workers have stopped. (They are also a little smaller than
zstd Parquet: the paths compress well.)

Parts carry the input's position in the whole input sequence (``_index``), so the parts of
several ranks (torchrun) are merged back into input order by :func:`join`, one window at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.outputs import atomic_output
from uiaa_cli.tables.table import Table
from uiaa_cli.tables.writers import TableWriter

FORMAT = "uiaa-predict-partial-2"  # 1: Parquet parts
MANIFEST = "manifest.json"
INDEX = "_index"


def partial_path(out: str | os.PathLike) -> Path:
    """Where the parts of ``out`` are kept until it is complete."""
    return Path(str(out) + ".partial")


class PartialTable:
    """``FOLDER``: parts and manifest (see the module doc). Open with :meth:`start`."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.pending: list[Table] = []

    @classmethod
    def start(cls, folder: Path, identity: dict[str, Any], resume: bool) -> PartialTable:
        """A new partial table, or (``resume``) the interrupted one in ``folder`` if it is the same run."""
        if folder.is_dir() and not folder.is_symlink() and all(is_temporary(p) for p in folder.iterdir()):
            shutil.rmtree(folder)  # a run killed before its first manifest: nothing to resume
        if folder.exists():
            if not resume:
                raise UiaaError("an interrupted run is kept here: add --resume to continue it, or delete it to "
                                "start again", where=at(str(folder)))
            manifest = read_manifest(folder)
            for key, what in (("model", "with another model"), ("inputs", "on other inputs"),
                              ("options", "with other options (--shard, torchrun ranks, --engine)")):
                if manifest["identity"].get(key) != identity.get(key):
                    raise UiaaError(f"the interrupted run was made {what}: resume with the same command, or "
                                    "delete it to start again", where=at(str(folder)))
            kept = {part["file"] for part in manifest["parts"]} | {MANIFEST}
            for stray in folder.iterdir():  # a part written but never committed, a temporary file
                if stray.name not in kept:
                    with contextlib.suppress(OSError):
                        stray.unlink()
            return cls(folder, manifest)
        try:
            folder.mkdir()
        except OSError as e:
            raise UiaaError(f"cannot create the folder of parts ({e.strerror or e})", where=at(str(folder))) from None
        table = cls(folder, {"format": FORMAT, "identity": identity, "parts": [], "done": 0, "names": None,
                             "failed": 0, "complete": False})
        try:
            table._write_manifest()
        except UiaaError:
            table.remove()  # nothing to resume
            raise
        return table

    # ------------------------------------------------------------------------------- progress

    @property
    def done(self) -> int:
        return int(self.manifest["done"])

    @property
    def rows(self) -> int:
        return sum(int(part["rows"]) for part in self.manifest["parts"])

    @property
    def failed(self) -> int:
        return int(self.manifest["failed"])

    def append(self, rows: Table) -> None:
        """Rows to be committed with the next :meth:`commit` (kept in memory until then)."""
        if len(rows):
            self.pending.append(rows)

    def commit(self, done: int, names: str, failed: int) -> None:
        """Make the pending rows durable: with them, ``done`` inputs (``names``: their hash) are finished."""
        parts = self.manifest["parts"]
        with kept_for_resume():  # a full disk: what the manifest names is whole
            if self.pending:
                rows = concat(self.pending)
                name = f"part-{len(parts):06d}.npz"
                write_part(rows, self.folder / name)
                parts.append({"file": name, "rows": len(rows)})
                self.pending = []
            self.manifest.update(done=done, names=names, failed=failed)
            self._write_manifest()

    def finish(self) -> None:
        self.manifest["complete"] = True
        with kept_for_resume():
            self._write_manifest()

    def _write_manifest(self) -> None:
        with atomic_output(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1))

    def tables(self) -> Iterator[Table]:
        """The committed parts, in order."""
        for part in self.manifest["parts"]:
            yield read_part(self.folder / part["file"])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def is_temporary(path: Path) -> bool:
    """A file ``outputs.atomic_output`` was writing when its run was killed."""
    return path.name.startswith(".") and path.name.endswith(".part")


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        raise UiaaError("not a folder of predict parts (no readable manifest.json): delete it to start again",
                        where=at(str(folder))) from None
    if isinstance(manifest, dict) and manifest.get("format") == "uiaa-predict-partial-1":
        raise UiaaError("an interrupted run of an earlier uiaa (its parts are Parquet): this version cannot "
                        "continue it; delete it to start again", where=at(str(folder)))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UiaaError("not a folder of predict parts: delete it to start again", where=at(str(folder)))
    return manifest


# ------------------------------------------------------------------------------------- parts


def write_part(rows: Table, path: Path) -> None:
    """One part, a compressed numpy archive (no pickles), under a temporary name renamed when complete."""
    columns = {f"c{i}": values.astype(str) if values.dtype.kind == "O" else values
               for i, values in enumerate(rows.columns.values())}
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, names=np.array(rows.names, dtype=str), **columns)


def read_part(path: Path) -> Table:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as part:
            return Table({name: part[f"c{i}"] for i, name in enumerate(part["names"].tolist())})
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:  # cut short, say by a power cut
        raise UiaaError(f"a damaged part ({type(e).__name__}: {str(e)[:80]}): delete {path.parent} to start again",
                        where=at(str(path))) from None


@contextlib.contextmanager
def kept_for_resume() -> Iterator[None]:
    """A write that fails (a full disk, a place made read-only) leaves the parts committed before it
    whole: the one-line error says so."""
    try:
        yield
    except UiaaError as e:
        raise UiaaError(f"{e.message}; the scores committed so far are kept: once the output can be written, run "
                        "the same command with --resume", where=e.where) from None


def concat(tables: list[Table]) -> Table:
    first = tables[0]
    if len(tables) == 1:
        return first
    return Table({name: np.concatenate([t[name] for t in tables]) for name in first.names}, dict(first.attrs))


def without_index(rows: Table, attrs: dict[str, Any]) -> Table:
    return Table({k: v for k, v in rows.columns.items() if k != INDEX}, attrs)


def join(partials: list[PartialTable], output: str, fmt: str | None, attrs: dict[str, Any],
         empty: Table) -> int:
    """Write the rows of ``partials`` into ``output`` (atomically), in input order; the rows written.

    One partial: its parts in turn. Several (torchrun ranks, each holding every W-th input): a merge
    by ``_index``, a window at a time: every rank's next part is read, the rows up to the smallest
    of their last indices are written in order, the rest wait for the next window; memory holds
    one part per rank.
    """
    with TableWriter(output, fmt) as writer:
        writer.write(without_index(empty, attrs))  # the header, even when no row made it
        if len(partials) == 1:
            for rows in partials[0].tables():
                writer.write(without_index(rows, attrs))
            return writer.rows
        streams = [p.tables() for p in partials]
        buffers: list[Table | None] = [None] * len(streams)
        while True:
            for i, stream in enumerate(streams):
                while stream is not None and (buffers[i] is None or not len(buffers[i])):
                    buffers[i] = next(stream, None)
                    if buffers[i] is None:
                        streams[i] = stream = None
            live = [b for b in buffers if b is not None and len(b)]
            if not live:
                return writer.rows
            # Rows up to the smallest "last index" among streams that may still hold smaller ones.
            bounds = [buffers[i][INDEX][-1] for i in range(len(streams)) if streams[i] is not None]
            bound = min(bounds) if bounds else np.iinfo(np.int64).max
            taken = []
            for i, b in enumerate(buffers):
                if b is None or not len(b):
                    continue
                cut = int(np.searchsorted(b[INDEX], bound, side="right"))
                taken.append(b.take(np.arange(cut)))
                buffers[i] = b.take(np.arange(cut, len(b)))
            merged = concat(taken)
            merged = merged.take(np.argsort(merged[INDEX], kind="stable"))
            writer.write(without_index(merged, attrs))
