"""``OUT.partial``: a cache build in progress, written so that it survives being killed at any moment.

The build (:mod:`uiaa_cli.pixels.cache_build`) writes to ``OUT.partial``, an HDF5 file whose every
dataset is allocated in full at creation, so that afterwards only raw bytes change, never HDF5's
internal structure: a build killed at any moment leaves a readable partial file. The count of
finished images (``committed``) is written only after their pixels have been flushed, so
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

The finished file's layout is in :mod:`uiaa_cli.pixels.cache` and docs/formats.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.pixels.cache import FORMAT, SKIPPED_GROUP
from uiaa_cli.pixels.cache_store import Store
from uiaa_cli.tables.encoding import write_h5_group
from uiaa_cli.tables.table import TABLE_GROUP, Table

REASON_BYTES = 256
ROW_CHUNK = 4096
POOL_SLACK = 1024  # bytes per image beyond raw pixels that the partial pool allows (headers of tiny images)


def partial_path(out: str | os.PathLike) -> Path:
    """Where an unfinished build of ``out`` lives."""
    return Path(str(out) + ".partial")


class PartialCache:
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
    def create(cls, path: Path, n: int, size: int, fingerprint: str, store: Store) -> PartialCache:
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
    def open(cls, path: Path, n: int, size: int, fingerprint: str, store: Store) -> PartialCache:
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

