"""Which model a command uses: ``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``.

A run folder stands for its checkpoint (``best.pt``, else ``last.pt``). Imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path

from uiaa_cli.errors import UiaaError, at

NO_MODEL = ("no model: give --model FILE, set UIAA_MODEL, or train one with "
            "'uiaa train LABELS-OR-CACHE' (it writes runs/<name>/best.pt, which predict then finds)")


def find_model(model: str | None, runs: Path = Path("runs")) -> Path:
    """``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``.

    A run folder stands for its ``best.pt`` (else ``last.pt``: training was interrupted). The newest
    run is the one ``runs/latest`` points at ('uiaa train' keeps it up to date: a symlink, or a text
    file naming the run), else the run with the newest checkpoint.
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
    latest = runs / "latest"
    if latest.is_file():  # a text file naming the run
        latest = runs / latest.read_text().strip()
    if latest.is_dir() and run_checkpoint(latest) is not None:
        return run_checkpoint(latest)
    candidates = [c for c in map(run_checkpoint, runs.iterdir() if runs.is_dir() else []) if c]
    if not candidates:
        raise UiaaError(NO_MODEL)
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run_checkpoint(folder: Path) -> Path | None:
    """A run folder's best.pt, else its last.pt, else None."""
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"
