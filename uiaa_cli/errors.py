"""The one error type a user sees (a one-line message, no traceback) and the exit statuses of every command."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What ``uiaa CMD``'s exit status says; the man pages' EXIT STATUS section is written from these."""

    DONE = 0
    INCOMPLETE = 1  # some inputs skipped (the rest done), or a training run that produced no usable model
    USAGE = 2  # usage or input error, before or instead of the work
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class UiaaError(Exception):
    """Bad input or usage: printed as ``uiaa CMD: error: <where>: <what>`` and exit status 2 (``status``)."""

    def __init__(self, message: str, *, where: str | None = None, status: int = ExitStatus.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.status = status

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


def at(path: str, line: int | None = None, *, output: bool = False) -> str:
    """``file:line`` for error messages (``-`` is ``<stdin>``, or ``<stdout>`` for an output)."""
    name = ("<stdout>" if output else "<stdin>") if path == "-" else str(path)
    return f"{name}:{line}" if line is not None else name
