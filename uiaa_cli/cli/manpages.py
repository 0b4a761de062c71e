"""Man pages (roff) generated from the command objects that also make ``--help``, so they never drift.

    python -m uiaa_cli.cli.manpages man        # writes man/uiaa.1 and man/uiaa-<command>.1 (make man)
    man ./man/uiaa-labels.1

Every command's summary, description, arguments, options (with their defaults) and examples come
from the typer/click objects (docstrings, ``help=`` and ``epilog=`` in the cli/ modules). The
reference prose that --help has no room for comes from ``docs/commands/<command>.md`` (a small
markdown subset: ``##``/``###`` headings, paragraphs, ``-`` lists, fenced code, pipe tables), so the
man page and the docs are one text; only exit status, environment and files are written here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from uiaa_cli import __version__
from uiaa_cli.errors import ExitStatus

SECTION = "1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands"

EXIT_STATUS = [(str(int(status)), text) for status, text in (
    (ExitStatus.DONE, "Success."),
    (ExitStatus.INCOMPLETE, "Not all was done: some inputs were skipped (an unreadable image, photo or sidecar, "
                            "each listed on stderr) and the rest was done; or train produced no "
                            "usable model (too many images missing, no epoch with a finite validation)."),
    (ExitStatus.USAGE, "Usage or input error: a one-line message on stderr names the file, line or image and what "
                       "is wrong. Nothing already written is lost: outputs appear under their final name only when "
                       "complete."),
    (ExitStatus.INTERRUPTED, "Interrupted (Ctrl-C); train saves a checkpoint first."),
)]
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
    text = re.sub(r"[^\x00-\x7f]", lambda m: f"\\[u{ord(m.group(0)):04X}]", text)  # groff reads ASCII
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


def inline(text: str) -> str:
    """Markdown's `code`, **bold** and *italic* inside escaped roff text."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(bold(part[1:-1]))
            continue
        part = escape(part)
        part = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", part)
        out.append(re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\\fI\1\\fR", part))
    return re.sub(r"^([.'])", r"\\&\1", "".join(out), flags=re.M)


def markdown_sections(text: str) -> str:
    """A docs/commands page as roff: ``##`` a section, ``###`` a subsection, fenced code and pipe tables
    kept verbatim, ``-`` items as bullets, everything else re-filled paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            code = "\n".join(escape(c) for c in lines[i + 1:end])
            out.append(f".PP\n.RS 4\n.nf\n{code}\n.fi\n.RE\n")
            i = end + 1
        elif line.startswith("|"):
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
            rows = [[c.strip() for c in row.strip().strip("|").split("|")] for row in lines[i:end]
                    if not re.fullmatch(r"[|\s:-]+", row)]
            out.append(".PP\n" + "".join(f"{inline(row[0])}\n.RS 4\n" + "".join(
                f"{inline(head)}: {inline(cell)}\n.br\n" for head, cell in zip(rows[0][1:], row[1:]) if cell)
                + ".RE\n" for row in rows[1:]))
            i = end
        elif line.startswith("#"):
            level, _, title = line.partition(" ")
            out.append((".SH " + escape(title.strip().upper()) if level == "##" else ".SS " + inline(title.strip()))
                       + "\n")
            i += 1
        elif not line.strip() or line.startswith("<!--"):
            i += 1
        else:
            bullet = line.startswith("- ")
            end = i + 1
            while end < len(lines) and lines[end].strip() and not lines[end].startswith(("- ", "#", "```", "|")):
                end += 1
            words = " ".join(" ".join(lines[i:end]).split())
            out.append((".IP \\(bu 2\n" + inline(words[2:]) if bullet else ".PP\n" + inline(words)) + "\n")
            i = end
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
    reference = DOCS / f"{name}.md"
    if reference.is_file():
        page.append(markdown_sections(reference.read_text(encoding="utf-8")))
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
