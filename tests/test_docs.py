"""The doc-test: the shell examples of README.md and docs/**/*.md that are marked runnable are run.

Convention (also in README.md, "Development"):

- A line ``<!-- doctest -->`` right before a fenced code block opened with a line ```` ```console ````
  marks that block runnable. Unmarked blocks are never run (examples that need AVA, a GPU or a
  long run stay unmarked).
- In a marked block, a line starting with ``$ `` is a command; a command line ending in ``\\``
  continues on the next line. Every other line is expected output of the command above it.
- Each command runs through ``bash -c`` (pipes, ``;``, ``$?`` allowed) and must exit 0. To show a
  command that exits 1 or 2, end it with ``; echo "exit $?"`` and write ``exit 1`` as its output.
- Each expected line must equal some line of the command's stdout+stderr (merged), after runs of
  spaces and tabs are collapsed to one space and both ends stripped. ``...`` in an expected line
  matches any text (timings, file sizes, a model's digits, which vary from machine to machine); a
  line that is only ``...`` stands for lines left out. Output lines the block does not show are
  allowed, and the order of the expected lines is not checked.
- The blocks of one file run in order, in one temporary folder for that file, so a block may use
  what an earlier block of the same file wrote. The folder is prepared with:

  - ``examples/``: the example data, ``python examples/make_examples.py examples -n 120``
    (``examples/AVA.txt``, ``examples/images/<id>.jpg``, ``examples/test.jpgl``,
    ``examples/ideal.csv``; 120 images, 30 of them held out);
  - ``photos/``: six of those images, ``100001.jpg`` .. ``100006.jpg``;
  - ``run/best.pt`` (only for files that name it): a tiny model, trained once per session with
    ``uiaa train train.h5 --arch resnet18 --weights none --size 32 --epochs 1 --device cpu --out run``
    on the 90 training images, its ONNX graph already exported (``run/.best.pt.onnx``).

- The commands find ``uiaa`` (and ``python``) in the bin folder of the interpreter that runs the
  tests (``.venv/bin``), first on PATH; ``UIAA_MODEL`` is unset, ``LC_ALL=C``, and
  ``XDG_CACHE_HOME`` is a temporary folder. Before it on PATH, ``tests/bin/uiaa`` runs each
  ``uiaa`` in a fork of a server that imported torch once (tests/forkserver.py), with the shell's
  pipes and the command's exit status (``UIAA_TEST_NO_FORKSERVER=1``: the installed command).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import fork_server

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- doctest -->"
PHOTOS = [f"1000{i:02d}.jpg" for i in range(1, 7)]
TIMEOUT = 180  # seconds per command


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@dataclass
class Command:
    line: int  # 1-based line of the command in its file
    text: str  # what bash -c runs
    expected: list[str] = field(default_factory=list)


def parse(text: str, name: str) -> list[list[Command]]:
    """The marked blocks of a markdown file, each a list of commands with their expected output."""
    lines = text.splitlines()
    blocks: list[list[Command]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARKER:
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```console":
            raise ValueError(f"{name}:{i + 1}: {MARKER} must be followed at once by a ```console block")
        i += 2
        commands: list[Command] = []
        while True:
            if i >= len(lines):
                raise ValueError(f"{name}: the doctest block ends without a closing ```")
            line = lines[i]
            if line.strip() == "```":
                break
            if line.startswith("$ "):
                start, parts = i, [line[2:]]
                while parts[-1].endswith("\\") and i + 1 < len(lines) and lines[i + 1].strip() != "```":
                    i += 1
                    parts.append(re.sub(r"^\s*(> )?", "", lines[i]))
                commands.append(Command(start + 1, "\n".join(parts)))
            elif not commands:
                raise ValueError(f"{name}:{i + 1}: output before the first '$ ' command of a doctest block")
            else:
                commands[-1].expected.append(line)
            i += 1
        if not commands:
            raise ValueError(f"{name}:{i + 1}: a doctest block without a command")
        blocks.append(commands)
        i += 1
    return blocks


def normalise(line: str) -> str:
    return " ".join(line.split())


def matches(expected: str, actual: str) -> bool:
    want, got = normalise(expected), normalise(actual)
    if "..." not in want:
        return want == got
    pattern = ".*".join(re.escape(part) for part in want.split("..."))
    return re.fullmatch(pattern, got) is not None


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines that no line of the output matches (a line that is only ... never misses)."""
    got = output.splitlines()
    return [e for e in expected if normalise(e) != "..." and not any(matches(e, g) for g in got)]


def command_bin() -> Path:
    for folder in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        if (folder / "uiaa").exists():
            return folder
    raise AssertionError(f"no 'uiaa' command beside {sys.executable} nor in .venv/bin: run 'make test' to install it")


def environment(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UIAA_MODEL", "UIAA_DEBUG")}
    env["PATH"] = f"{command_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["LC_ALL"] = "C"
    env["XDG_CACHE_HOME"] = str(cache)
    server = fork_server("docs", env)
    if server is not None:  # tests/bin/uiaa: the commands run in its forks (conftest.run_uiaa)
        env.update(UIAA_TEST_FORKSERVER=server.path, UIAA_TEST_PYTHON=sys.executable,
                   PATH=f"{REPO / 'tests' / 'bin'}{os.pathsep}{env['PATH']}")
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", timeout=TIMEOUT)


def check(command: Command, cwd: Path, env: dict[str, str], name: str) -> None:
    result = run(command.text, cwd, env)
    where = f"{name}:{command.line}: $ {command.text}"
    assert result.returncode == 0, f"{where}\nexit status {result.returncode}; output:\n{result.stdout[-3000:]}"
    missing = missing_lines(command.expected, result.stdout)
    assert not missing, (f"{where}\nexpected lines not in the output:\n" + "\n".join(missing)
                         + f"\n--- output:\n{result.stdout[-3000:]}")


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


def build_prepared(base: Path, env: dict[str, str]) -> None:
    """Example data, six photos and a tiny model with its ONNX graph: what every doc file starts from."""
    subprocess.run([sys.executable, str(REPO / "examples" / "make_examples.py"), str(base / "examples"),
                    "-n", "120"], check=True, capture_output=True)
    (base / "photos").mkdir()
    for photo in PHOTOS:
        shutil.copy(base / "examples" / "images" / photo, base / "photos" / photo)
    work = base.parent / f"{base.name}-model"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base / "examples", work / "examples")
    for command in ("uiaa labels examples/AVA.txt --exclude examples/test.jpgl -o train.csv -q",
                    "uiaa cache train.csv --images examples/images --size 32 -o train.h5 -q",
                    "uiaa train train.h5 --arch resnet18 --weights none --size 32 --epochs 1 --device cpu"
                    " --out run -q",
                    f"uiaa predict examples/images/{PHOTOS[0]} -m run/best.pt -q"):  # exports the ONNX graph
        result = run(command, work, env)
        assert result.returncode == 0, f"preparing the doc-test folder: $ {command}\n{result.stdout[-3000:]}"
    (base / "run").mkdir()
    for name in ("best.pt", ".best.pt.onnx"):
        shutil.copy(work / "run" / name, base / "run" / name)
    shutil.rmtree(work)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, cache_home) -> Path:
    """The prepared folder, built once per test run (shared by pytest-xdist's workers: make test)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder all workers of this run share
    base = root / "docs-base"
    with open(root / "docs-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds it, the others wait and reuse it
        if not (base / ".ready").exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            build_prepared(base, environment(cache_home))
            (base / ".ready").touch()
    return base


def runnable_files() -> list[Path]:
    return [p for p in doc_files()
            if any(line.strip() == MARKER for line in p.read_text(encoding="utf-8").splitlines())]


@pytest.mark.parametrize("doc", runnable_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_doc_examples_run(doc: Path, prepared: Path, cache_home: Path, tmp_path: Path) -> None:
    name = str(doc.relative_to(REPO))
    text = doc.read_text(encoding="utf-8")
    blocks = parse(text, name)
    folder = tmp_path / "work"
    skip = [".ready"] + ([] if "run/best.pt" in text else ["run"])
    shutil.copytree(prepared, folder, ignore=shutil.ignore_patterns(*skip))
    env = environment(cache_home)
    for commands in blocks:
        for command in commands:
            check(command, folder, env, name)


def test_every_doc_parses_and_the_main_ones_have_runnable_examples() -> None:
    counts = {str(p.relative_to(REPO)): sum(map(len, parse(p.read_text(encoding="utf-8"), p.name)))
              for p in doc_files()}
    for name in ("README.md", "docs/commands/labels.md", "docs/commands/predict.md"):
        assert counts.get(name, 0) > 0, f"{name} has no runnable example"


def test_the_checker_catches_a_wrong_example(tmp_path: Path) -> None:
    """A block whose output or exit status is wrong fails: the doc-test can fail."""
    text = "\n".join([MARKER, "```console", "$ echo one two \\", "  three", "one two three", "$ printf 'a\\tb\\n'",
                      "a  b", "$ echo took 1.5 s", "took ... s", "...", "```", ""])
    [commands] = parse(text, "t.md")
    assert [c.text for c in commands] == ["echo one two \\\nthree", "printf 'a\\tb\\n'", "echo took 1.5 s"]
    env = environment(tmp_path)
    for command in commands:
        check(command, tmp_path, env, "t.md")
    assert missing_lines(["one two four"], "one two three\n") == ["one two four"]
    assert missing_lines(["took ... ms"], "took 1.5 s\n") == ["took ... ms"]
    with pytest.raises(AssertionError, match="exit status 3"):
        check(Command(1, "exit 3"), tmp_path, env, "t.md")
    with pytest.raises(ValueError, match="must be followed"):
        parse(f"{MARKER}\n\n```console\n$ true\n```\n", "t.md")
