"""The progress bar every command shows on stderr (cache, train, predict), or nothing.

stdout carries data, so the bar never touches it; lines printed through ``line`` go above the bar.
rich is imported only when a bar is shown, so a command in a pipe or a log never loads it.
"""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """A rich bar on stderr when ``show`` (None: when stderr is a terminal), else nothing at all.

    ``label`` is the text before the bar; ``fields`` is a rich format after the count (e.g. ``"loss
    {task.fields[loss]:.4f}"``), fed by ``advance(**values)``; ``rate`` adds the measured items/s;
    ``remaining`` shows the time left (else the time so far); ``transient`` removes the bar at the end.
    With ``label`` None the bar starts empty, and ``restart`` gives it its first task."""

    def __init__(self, show: bool | None, label: str | None, total: int | None = None, completed: int = 0, *,
                 fields: str = "", rate: bool = False, remaining: bool = True, transient: bool = True,
                 **values: Any) -> None:
        self.shown = sys.stderr.isatty() if show is None else show
        self.progress: Any = None
        self.task: Any = None
        self.rate = rate
        if not self.shown:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if fields:
            columns.append(TextColumn(fields))
        if rate:
            columns.append(TextColumn("{task.fields[rate]} images/s"))
            values.setdefault("rate", "-")
        columns.append(TimeRemainingColumn() if remaining else TimeElapsedColumn())
        self.progress = Progress(*columns, console=Console(stderr=True), transient=transient, redirect_stdout=False)
        if label is not None:
            self.task = self.progress.add_task(label, total=total, completed=completed, **values)

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def restart(self, label: str, total: int | None, completed: int = 0, **values: Any) -> None:
        """A new task in place of the last (train: one per epoch)."""
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(label, total=total, completed=completed, **values)

    def advance(self, n: int = 1, **values: Any) -> None:
        if self.progress is None or self.task is None:
            return
        self.progress.update(self.task, advance=n, **values)
        if self.rate:
            speed = next(t.speed for t in self.progress.tasks if t.id == self.task)
            self.progress.update(self.task, rate=f"{speed:.0f}" if speed else "-")

    def line(self, text: str) -> bool:
        """Print ``text`` above the bar; False (nothing printed) when no bar is shown."""
        if self.progress is None:
            return False
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        return True
