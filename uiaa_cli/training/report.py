"""What a run tells its user: a progress bar or one line per epoch on stderr, the closing summary of
``best.pt`` and ``last.pt``, the images left out, and ``metrics.csv`` (one row per epoch)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uiaa_cli.progress import ProgressBar
from uiaa_cli.tables.table import Table
from uiaa_cli.training.settings import SELECT_RULES, best_epoch

if TYPE_CHECKING:
    from uiaa_cli.training.data import Source


class Reporter:
    """A progress bar (loss, images/s) on stderr, or one line per epoch; silent off rank 0."""

    def __init__(self, enabled: bool, bar: bool | None) -> None:
        self.enabled = enabled
        self.bar = ProgressBar(bar if enabled else False, None,
                               fields="loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s").__enter__()

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.bar.restart(f"epoch {epoch + 1}/{epochs}", total=steps, completed=done, loss=float("nan"), ips=0.0)

    def step(self, loss: float, ips: float) -> None:
        self.bar.advance(1, loss=loss, ips=ips)

    def line(self, text: str) -> None:
        if self.enabled and not self.bar.line(text):
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.__exit__(None, None, None)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    def f(key: str, fmt: str = ".4f") -> str:
        v = row.get(key)
        return "n/a" if v is None else format(v, fmt)

    return (f"uiaa train: epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  loss {f('train_loss')}  "
            f"val loss {f('val_loss')}  SRCC {f('srcc')}  PCC {f('pcc')}  acc {f('accuracy')}  "
            f"{row['images_per_s']:.1f} img/s  {row['seconds']:.1f} s")


def summary_lines(history: list[dict[str, Any]], rule: str, validated: bool | None = None) -> list[str]:
    """Both checkpoints with their epoch and validation metrics: best.pt (by ``rule``; none when no epoch
    was sound, see ``settings.sound_epoch``) and last.pt."""
    def describe(row: dict[str, Any]) -> str:
        shown = "  ".join(f"{label} {'n/a' if row.get(key) is None else format(row[key], '.4f')}"
                          for key, label in (("val_loss", "val loss"), ("srcc", "SRCC"), ("pcc", "PCC"),
                                             ("mse", "MSE"), ("accuracy", "acc"), ("std_srcc", "std SRCC")))
        return f"epoch {row['epoch']}  {shown}"

    best = best_epoch(history, rule, validated)
    last = f"uiaa train: last.pt  {describe(history[-1])}"
    if best is None:
        return [last]
    return [f"uiaa train: best.pt  {describe(history[best])}  ({SELECT_RULES[rule]}, --select {rule})", last]


def report_failures(source: Source, reporter: Reporter, main: bool, of: str = "") -> None:
    """One line per image that could not be read (the first time only): it is left out. Every rank
    takes its source's failures; rank 0 (``main``) tells them."""
    failures = source.take_failures()
    if not main:
        return
    for name, reason in failures[:20]:
        reporter.line(f"uiaa train: left out{of} {name}: {reason}")
    if len(failures) > 20:
        reporter.line(f"uiaa train: left out{of} {len(failures) - 20} more images that could not be read")


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    from uiaa_cli.tables.writers import write_table

    names = list(history[0])
    columns = {n: np.array([np.nan if r.get(n) is None else r[n] for r in history], dtype=np.float64)
               for n in names}
    columns["epoch"] = columns["epoch"].astype(np.int64)
    write_table(Table(columns), path)
