"""Which model a command uses: ``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``,
else a run found nearby (a ``latest`` pointer in ``.`` or a folder of it, such as the demo's
``demo/latest``, or a run folder under ``demo/``).

A run folder stands for its checkpoint (``best.pt``, else ``last.pt``). With no model at all, the
error names the checkpoints it saw nearby. Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from uiaa_cli.errors import UiaaError, at

NO_MODEL = ("no model: give --model FILE, set UIAA_MODEL, or train one with "
            "'uiaa train LABELS-OR-CACHE' (it writes runs/<name>/best.pt, which predict then finds)")
DEMO = Path("demo")  # examples/demo.py's folder: its run is demo/run, pointed at by demo/latest
MODEL_SUFFIXES = (".pt", ".onnx")
SHOWN = 3  # checkpoints named in the no-model error


def find_model(model: str | None, runs: Path = Path("runs"), *, here: Path = Path("."),
               note: Callable[[str], None] | None = None) -> Path:
    """``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``, else one nearby.

    A run folder stands for its ``best.pt`` (else ``last.pt``: training was interrupted). The newest
    run is the one ``runs/latest`` points at ('uiaa train' keeps it up to date: a symlink, or a text
    file naming the run), else the run with the newest checkpoint. Nearby (``here``): the runs that
    ``here/latest`` and ``here/*/latest`` point at (``uiaa train --out demo/run`` writes
    ``demo/latest``) and the run folders under ``here/demo``; the newest is used, and ``note`` says
    which. Without any, the error names the checkpoints in ``here`` and its folders.
    """
    given = model or os.environ.get("UIAA_MODEL") or None
    if given:
        path = Path(given)
        if path.is_dir():
            checkpoint = run_checkpoint(path)
            if checkpoint is None:
                raise UiaaError("no best.pt or last.pt in this folder", where=at(str(path)))
            return checkpoint
        if not path.is_file():
            raise UiaaError("no such model file" + ("" if model else " (from $UIAA_MODEL)"), where=at(str(path)))
        return path
    found = newest_run(runs)
    if found is not None:
        return found
    nearby = nearby_runs(here)
    if nearby:
        checkpoint, pointer = max(nearby, key=lambda c: c[0].stat().st_mtime)
        if note is not None:
            note(f"no --model: using {checkpoint} (found by {pointer}); give --model to choose another")
        return checkpoint
    seen = nearby_checkpoints(here)
    if seen:
        more = f" and {len(seen) - SHOWN} more" if len(seen) > SHOWN else ""
        raise UiaaError(f"no model: give --model FILE (checkpoints here: {', '.join(map(str, seen[:SHOWN]))}{more}), "
                        "set UIAA_MODEL, or train one with 'uiaa train LABELS-OR-CACHE' (it writes "
                        "runs/<name>/best.pt, which predict then finds)")
    raise UiaaError(NO_MODEL)


def newest_run(runs: Path) -> Path | None:
    """The checkpoint of the run ``runs/latest`` points at, else of the run with the newest checkpoint."""
    latest = pointed_run(runs / "latest")
    if latest is not None and run_checkpoint(latest) is not None:
        return run_checkpoint(latest)
    candidates = [c for c in map(run_checkpoint, runs.iterdir() if runs.is_dir() else []) if c]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def pointed_run(pointer: Path) -> Path | None:
    """The run folder a ``latest`` pointer names: a symlink to it, or a text file holding its name."""
    try:
        if pointer.is_symlink():
            target = pointer.parent / os.readlink(pointer)
            return target if target.is_dir() else None
        if pointer.is_file() and pointer.stat().st_size < 4096:
            return pointer.parent / pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return pointer if pointer.is_dir() else None


def nearby_runs(here: Path) -> list[tuple[Path, Path]]:
    """``(checkpoint, what found it)`` for the runs pointed at by ``here/latest`` and ``here/*/latest``,
    and the run folders under ``here/demo``."""
    found: dict[Path, tuple[Path, Path]] = {}
    pointers = [here / "latest"] + [folder / "latest" for folder in subfolders(here)]
    for pointer in pointers:
        run = pointed_run(pointer)
        checkpoint = run_checkpoint(run) if run is not None else None
        if checkpoint is not None:
            found.setdefault(checkpoint.resolve(), (checkpoint, pointer))
    for run in subfolders(here / DEMO):
        checkpoint = run_checkpoint(run)
        if checkpoint is not None:
            found.setdefault(checkpoint.resolve(), (checkpoint, here / DEMO))
    return list(found.values())


def nearby_checkpoints(here: Path) -> list[Path]:
    """The model files (``.pt``, ``.onnx``; hidden ones, such as kept graphs, left out) in ``here`` and
    its folders, newest first."""
    files = []
    for folder in [here, *subfolders(here)]:
        try:
            files += [p for p in folder.iterdir() if p.suffix in MODEL_SUFFIXES and not p.name.startswith(".")
                      and p.is_file()]
        except OSError:
            continue
    return sorted(files, key=lambda p: -p.stat().st_mtime)


def subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder`` (not hidden), sorted; none if it cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []


def run_checkpoint(folder: Path) -> Path | None:
    """A run folder's best.pt, else its last.pt, else None."""
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"
