"""Man pages (roff) generated from the command objects that also make ``--help``, so they never drift.

    python -m uiaa_cli.cli.manpages man        # writes man/uiaa.1 and man/uiaa-<command>.1 (make man)
    man ./man/uiaa-labels.1

Every command's summary, description, arguments, options (with their defaults) and examples come
from the typer/click objects (docstrings, ``help=`` and ``epilog=`` in cli.py); only the sections
that --help has no place for (exit status, environment, files) are written here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from uiaa_cli import __version__

SECTION = "1"

EXIT_STATUS = [
    ("0", "Success."),
    ("1", "Some inputs were skipped (an unreadable image in cache or predict; listed on stderr); the rest was "
          "done."),
    ("2", "Usage or input error: a one-line message on stderr names the file, line or image and what is wrong. "
          "Nothing already written is lost: outputs appear under their final name only when complete."),
    ("130", "Interrupted (Ctrl-C); train saves a checkpoint first."),
]
ENVIRONMENT = [
    ("UIAA_MODEL", "The checkpoint predict uses when no --model is given."),
    ("UIAA_DEBUG", "If set, errors show a Python traceback (as --debug)."),
    ("UIAA_MAX_PIXELS", "Images with more pixels are refused as possible decompression bombs (default "
                        "150000000)."),
    ("RANK, WORLD_SIZE, LOCAL_RANK", "Set by torchrun: train and predict then run as one process of many."),
]
FILES = [
    ("runs/<name>/best.pt, last.pt, metrics.csv", "What train writes; runs/latest points at the newest run, "
                                                  "which predict uses by default."),
]


def escape(text: str) -> str:
    """Text safe for roff: backslashes, minus signs, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def prose(text: str) -> str:
    """Paragraphs of help text as roff ``.PP`` blocks (lines re-filled by man)."""
    return "".join(f".PP\n{escape(' '.join(p.split()))}\n" for p in paragraphs(text.replace("\b", "")))


def epilog_sections(epilog: str) -> str:
    """An epilog: an ``Examples:`` heading, indented command lines (kept verbatim), and prose."""
    out = []
    for block in paragraphs(epilog):
        lines = block.splitlines()
        if block.strip().rstrip(":").lower() == "examples":
            out.append(".SH EXAMPLES\n")
        elif all(line.startswith("  ") for line in lines):
            code = "\n".join(escape(line[2:]) for line in lines)
            out.append(f".PP\n.RS 4\n.nf\n{code}\n.fi\n.RE\n")
        else:
            out.append(prose(block))
    return "".join(out)


def definitions(items: list[tuple[str, str]]) -> str:
    return "".join(f".TP\n{term}\n{escape(' '.join(text.split()))}\n" for term, text in items)


def bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


def argument_name(param: Any) -> str:
    return (param.metavar or param.name.upper()).strip("{}")


def option_term(record: str) -> str:
    """``-o, --output <str>`` as bold option names and an italic value."""
    names, _, value = record.partition(" <")
    term = ", ".join(bold(n.strip()) for n in names.split(","))
    return term + (f" {italic('<' + value)}" if value else "")


def header(name: str, summary: str) -> str:
    title = name.upper()
    # .nh/.ad l: no hyphenation, ragged right; option names and paths must not be split or stretched.
    return (f'.TH "{title}" "{SECTION}" "" "uiaa {__version__}" "uiaa manual"\n.nh\n.ad l\n'
            f".SH NAME\n{escape(name)} \\- {escape(summary)}\n")


def command_page(group: Any, name: str, command: Any, group_ctx: Any) -> str:
    """The page ``uiaa-<name>(1)``."""
    ctx = command.make_context(name, [], parent=group_ctx, resilient_parsing=True)
    help_text = (command.help or "").strip()
    summary = paragraphs(help_text)[0].strip() if help_text else ""
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    synopsis = " ".join([bold(f"uiaa {name}"), "[\\fIOPTIONS\\fR]"] + [
        italic(argument_name(a)) if a.required else f"[{italic(argument_name(a))}]" for a in arguments])
    page = [header(f"uiaa-{name}", " ".join(summary.split())), f".SH SYNOPSIS\n{synopsis}\n",
            ".SH DESCRIPTION\n", prose(help_text)]
    if arguments:
        page.append(".SH ARGUMENTS\n")
        page.append(definitions([(italic(argument_name(a)), (a.get_help_record(ctx) or ("", ""))[1])
                                 for a in arguments]))
    page.append(".SH OPTIONS\n")
    records = [o.get_help_record(ctx) for o in options] + [("-h, --help", "Show the help and exit.")]
    page.append(definitions([(option_term(term), text) for term, text in records if term]))
    if command.epilog:
        page.append(epilog_sections(command.epilog))
    page.append(common_sections(exclude=name))
    return "".join(page)


def common_sections(exclude: str | None = None) -> str:
    others = [f"uiaa-{n}" for n in command_names() if n != exclude]
    see_also = ", ".join(f"\\fB{escape(n)}\\fR({SECTION})" for n in (["uiaa"] if exclude else []) + others)
    return (".SH EXIT STATUS\n" + definitions([(bold(code), text) for code, text in EXIT_STATUS])
            + ".SH ENVIRONMENT\n" + definitions([(bold(var), text) for var, text in ENVIRONMENT])
            + ".SH FILES\n" + definitions([(italic(path), text) for path, text in FILES])
            + f".SH SEE ALSO\n{see_also}\n")


def root_page(group: Any, ctx: Any) -> str:
    """The page ``uiaa(1)``: what uiaa is, its commands, its global options."""
    commands = [(bold(f"uiaa {n}"), f"{c.get_short_help_str(200)} See uiaa-{n}({SECTION}).")
                for n, c in group.commands.items() if not getattr(c, "hidden", False)]
    options = [p.get_help_record(ctx) for p in group.params if not getattr(p, "hidden", False)]
    options = [r for r in options if r] + [("-h, --help", "Show the help and exit.")]
    callback_doc = (group.callback.__doc__ or "") if group.callback else ""
    return "".join([
        header("uiaa", " ".join((group.help or "").split())),
        f".SH SYNOPSIS\n{bold('uiaa')} [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...\n",
        ".SH DESCRIPTION\n", description_with_examples(callback_doc),
        ".SH COMMANDS\n", definitions(commands),
        ".SH OPTIONS\n", definitions([(option_term(t), h) for t, h in options]),
        common_sections(),
    ])


def description_with_examples(doc: str) -> str:
    """A docstring whose indented lines are commands: prose as paragraphs, commands verbatim."""
    import inspect

    return epilog_sections(inspect.cleandoc(doc)) if doc else ""


def cli_group() -> tuple[Any, Any]:
    import typer.main

    from uiaa_cli.cli import app

    group = typer.main.get_command(app)
    return group, group.make_context("uiaa", [], resilient_parsing=True)


def command_names() -> list[str]:
    group, _ = cli_group()
    return [n for n, c in group.commands.items() if not getattr(c, "hidden", False)]


def generate() -> dict[str, str]:
    """``{file name: roff text}`` for uiaa.1 and every command's page."""
    group, ctx = cli_group()
    pages = {f"uiaa.{SECTION}": root_page(group, ctx)}
    for name in command_names():
        pages[f"uiaa-{name}.{SECTION}"] = command_page(group, name, group.commands[name], ctx)
    return pages


def write(folder: Path) -> list[Path]:
    """Write every page into ``folder``, removing pages of commands that no longer exist."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = generate()
    for stale in folder.glob(f"uiaa*.{SECTION}"):
        if stale.name not in pages:
            stale.unlink()
    written = []
    for name, text in pages.items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else Path("man")
    written = write(folder)
    print(f"uiaa manpages: {len(written)} pages in {folder}/", file=sys.stderr)


if __name__ == "__main__":
    main()
