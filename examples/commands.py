"""The ``uiaa`` commands of the example scripts (demo, ablation, ava), run in the script's own process.

Each is the real command line, echoed as it would be typed and parsed by the same typer app as the
``uiaa`` program, so what a script prints is what a user would see. In one process torch loads
once (4-7 s a command on a 2-core machine otherwise) and stays loaded between the commands.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's uiaa_cli, installed or not


def uiaa(*args: object, capture: bool = False, stderr: TextIO | None = None, echo: bool = True) -> tuple[int, str]:
    """``uiaa ARGS``: its exit status and (``capture``) its stdout; its messages go to ``stderr``
    (default: this process's)."""
    from uiaa_cli.cli.app import app

    words = [str(a) for a in args]
    if echo:
        print(f"\n$ uiaa {shlex.join(words)}", flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext(), \
            contextlib.redirect_stderr(stderr) if stderr is not None else contextlib.nullcontext():
        try:
            status = app(args=words, prog_name="uiaa", standalone_mode=False)
        except Exception as e:  # noqa: BLE001 - a usage error of a command line built by the script
            print(f"uiaa {words[0]}: error: {e}", file=sys.stderr, flush=True)
            status = 2
    return int(status or 0), out.getvalue()
