"""How every command ends: messages on stderr, one error line and its exit status, quiet broken pipes."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer

from uiaa_cli.errors import ExitStatus, UiaaError


class State:
    debug = bool(os.environ.get("UIAA_DEBUG"))
    quiet = False


def say(message: str) -> None:
    """A line for people, on stderr (silent with --quiet)."""
    if not State.quiet:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def handled(command: str, quiet: bool = False, debug: bool = False) -> Iterator[None]:
    """Turn a UiaaError into ``uiaa CMD: error: ...`` on stderr and exit status 2 (unless --debug)."""
    State.quiet = quiet
    State.debug = State.debug or debug
    try:
        yield
    except UiaaError as e:
        if State.debug:
            raise
        fail(command, str(e), e.status)
    except BrokenPipeError:
        quiet_closed_stdout()
        raise typer.Exit(ExitStatus.DONE) from None
    except OSError as e:  # a full disk or a dead device under stdout (files are named by the writer)
        from uiaa_cli.tables.outputs import WRITE_ERRNOS

        if State.debug or e.errno not in WRITE_ERRNOS or e.filename is not None:
            raise
        fail(command, f"<stdout>: cannot write: {e.strerror}", ExitStatus.USAGE)


def fail(command: str, message: str, status: int) -> None:
    """The one error line, after what stdout still holds (dropped if stdout cannot take it)."""
    try:
        sys.stdout.flush()
    except OSError:
        quiet_closed_stdout()
    print(f"uiaa {command}: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(status) from None


def quiet_closed_stdout() -> None:
    """The reader (``| head``) has gone: point stdout at /dev/null so Python's exit stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
