"""The ``uiaa`` command: the typer app, its subcommands (one module each in this package) and the entry point.

Tables go to stdout, people's messages to stderr. Heavy modules (torch, h5py, pyarrow) are imported
inside the commands that need them, so ``labels``, ``evaluate`` and ``convert`` start fast and run
where torch is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperOption

from uiaa_cli import __version__
from uiaa_cli.cli import cache, convert, dedupe, evaluate, labels, predict, rate, train
from uiaa_cli.cli.handling import quiet_closed_stdout
from uiaa_cli.errors import ExitStatus

app = typer.Typer(
    name="uiaa",
    help="Image aesthetic assessment: binary labels, scores and vote distributions from one model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def version_callback(value: bool) -> None:
    if value:
        print(f"uiaa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True,
                                                     help="Print the version and exit.")] = None,
) -> None:
    """uiaa turns ratings into targets, caches images, trains, predicts, evaluates and converts.

    Each subcommand reads and writes plain tables (CSV, TSV, Parquet, HDF5) and composes in pipes:

      uiaa labels AVA.txt --kind gauss-mv --lam 0.5 > labels.csv
      uiaa cache labels.csv --images ava/images -o ava.h5
      uiaa train ava.h5 --loss ce
      uiaa predict photos/ | sort -t$'\\t' -k2 -g   # best last, whatever the names
    """


# typer 0.29 shows types as Python annotations (<str>, <list[str]>); --help is read by people.
_TYPE_WORDS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def readable_type(param: Any, ctx: Any) -> str:
    """What ``--help`` shows after an option or argument: TEXT, INTEGER, NUMBER, PATH, [a|b|c], LIST."""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_list:
        return "LIST"
    annotation = desc.annotation
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


TyperArgument.display_type = TyperOption.display_type = readable_type  # type: ignore[method-assign]

for _module in (labels, evaluate, convert, cache, train, predict, dedupe, rate):
    _name = _module.__name__.rsplit('.', 1)[1]
    app.command(_name, epilog=_module.EPILOG)(getattr(_module, _name))


def main() -> None:
    """Entry point: usage errors in one line, clean exits on a closed pipe and on Ctrl-C."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as e:  # 'uiaa' or 'uiaa CMD' alone: the help
        e.show()
        sys.exit(e.exit_code)
    except ClickException as e:  # a bad option value, a missing argument, an unknown command
        print(usage_error_line(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        quiet_closed_stdout()
        sys.exit(ExitStatus.DONE)
    except KeyboardInterrupt:
        print("uiaa: interrupted", file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    sys.exit(status if isinstance(status, int) else ExitStatus.DONE)


def usage_error_line(e: Any) -> str:
    """``uiaa CMD: error: invalid value for '--lam': ...`` (one line, the usual uiaa shape)."""
    ctx = getattr(e, "ctx", None)
    command = f"uiaa {ctx.info_name}" if ctx is not None and ctx.parent is not None else "uiaa"
    message = " ".join(e.format_message().split())
    message = message[:1].lower() + message[1:].rstrip(".")
    hint = f" (see '{command} --help')" if ctx is not None else ""
    return f"{command}: error: {message}{hint}"
