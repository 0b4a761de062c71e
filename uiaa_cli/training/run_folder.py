"""The folder a run writes: its name (``--out``, or ``runs/ARCH-KIND-LOSS-TIME``), the checks and the
lock that let one run at a time write it, and the ``latest`` pointer beside it.

The folder holds ``last.pt`` (resumable), ``best.pt`` and ``metrics.csv`` (docs/formats.md); a folder
that already holds a run is continued with ``--resume``, never written over.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.models.model_files import pointed_run
from uiaa_cli.tables.outputs import check_output_folder, output_lock
from uiaa_cli.training.runtime import Dist


class RunFolder:
    """The run's folder, checked and locked by rank 0 (the lock is released in ``close``)."""

    def __init__(self) -> None:
        self._lock: Any = None
        self.previous_latest: str | None = None  # what ``latest`` named before this run (withdraw_latest)

    def reserve(self, out: Path) -> None:
        """Check and lock a folder named by ``--out`` before any work: a run that cannot be saved is not
        started."""
        check_output_folder(out, what="run folder", create=False)
        self.lock(out)

    def open(self, out: Path, dist: Dist, resuming: bool) -> Path:
        """Create and lock ``out`` (rank 0), refuse one that holds a run unless ``resuming``, and point
        ``latest`` at it."""
        if dist.main:
            check_output_folder(out, what="run folder")
            self.lock(out)
        if not resuming and (out / "last.pt").exists():
            self.close()
            raise UiaaError(f"already holds a run: continue it with --resume {out}, or choose another --out",
                            where=at(str(out)))
        if dist.main:
            self.previous_latest = latest_target(out.parent)
            point_latest(out)
        return out

    def lock(self, out: Path) -> None:
        """One run at a time writes a folder."""
        if self._lock is not None:
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UiaaError(f"cannot create the run folder: {e.strerror or e}", where=at(str(out))) from None
        lock = output_lock(out)
        lock.__enter__()
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)


def run_folder(out: str | None, arch: str, kind: str, loss: str, dist: Dist) -> Path:
    """``--out``, or a new ``runs/ARCH-KIND-LOSS-TIME``; under torchrun every rank takes rank 0's name."""
    return Path(dist.from_main(str(Path(out) if out else default_out(arch, kind, loss))))


def default_out(arch: str, kind: str, loss: str) -> Path:
    base = Path("runs") / f"{arch}-{kind}-{loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def point_latest(out: Path) -> None:
    """``latest`` beside the run (``runs/latest`` by default) -> the newest run (a relative symlink, else
    a text file naming it), when a run starts and after each epoch."""
    link = out.parent / "latest"
    tmp = out.parent / f".latest.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.unlink()
    try:
        tmp.symlink_to(out.name, target_is_directory=True)
    except OSError:
        tmp.write_text(out.name + "\n")
    try:
        os.replace(tmp, link)
    except OSError:  # e.g. an old 'latest' folder: leave it
        with contextlib.suppress(OSError):
            tmp.unlink()



def latest_target(folder: Path) -> str | None:
    """The name of the run ``folder/latest`` points at (read as predict reads it), or None."""
    link = folder / "latest"
    run = pointed_run(link)
    return run.name if run is not None and run != link else None


def withdraw_latest(out: Path, previous: str | None) -> None:
    """``latest`` back to what it named before the run ``out`` started (removed if it named nothing),
    if it still names ``out``: a run that ended without best.pt is not the model predict should find."""
    if latest_target(out.parent) != out.name:
        return
    if previous is None or previous == out.name:
        with contextlib.suppress(OSError):
            (out.parent / "latest").unlink()
    else:
        point_latest(out.parent / previous)
