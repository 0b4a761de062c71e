"""The one error type a user sees: a one-line message, exit status 2, no traceback."""

from __future__ import annotations


class UiaaError(Exception):
    """Bad input or usage: printed as ``uiaa CMD: error: <where>: <what>`` and exit status 2."""

    def __init__(self, message: str, *, where: str | None = None, status: int = 2) -> None:
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
