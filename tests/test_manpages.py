"""The man pages in man/ are the ones the commands generate now (run `make man` after changing help)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uiaa_cli.cli import manpages

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return manpages.generate()


def test_shipped_pages_equal_fresh_ones(pages):
    shipped = {p.name: p.read_text() for p in (REPO / "man").glob("uiaa*.1")}
    assert set(shipped) == set(pages), "man/ is out of date: run `make man`"
    for name, text in pages.items():
        assert shipped[name] == text, f"man/{name} is out of date: run `make man`"


def test_one_page_per_command_with_every_option(pages):
    group, ctx = manpages.cli_group()
    assert set(pages) == {"uiaa.1"} | {f"uiaa-{n}.1" for n in group.commands}
    for name, command in group.commands.items():
        page = pages[f"uiaa-{name}.1"]
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert manpages.escape(opt) in page, f"{opt} missing from uiaa-{name}.1"
        assert ".SH EXAMPLES" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_render_without_warnings(pages, tmp_path):
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
        result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stderr == "", f"{name}: {result.stderr}"
    rendered = subprocess.run(["groff", "-man", "-Tutf8", str(tmp_path / "uiaa-labels.1")], capture_output=True,
                              text=True, timeout=30).stdout
    assert "uiaa-labels - Turn ratings into training targets" in rendered
    assert "--exclude" in rendered.replace("\u2010", "-").replace("\u2212", "-")


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man")
def test_a_non_editable_install_puts_the_pages_where_man_finds_them(tmp_path):
    """``pip install .`` (a wheel) carries man/ to <prefix>/share/man/man1, which man finds from PATH."""
    source, wheels, prefix = tmp_path / "source", tmp_path / "wheels", tmp_path / "prefix"
    for part in ("uiaa_cli", "man"):  # a copy: setuptools writes build/ and egg-info beside the sources
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True,
                   capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("uiaa-*.whl")
    # A venv of its own: pip install --prefix would remove the running environment's uiaa first.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", prefix], check=True)
    subprocess.run([*pip, "--python", prefix / "bin" / "python", "install", "--no-deps", "--no-compile", wheel],
                   check=True, capture_output=True)
    assert sorted(p.name for p in (prefix / "share" / "man" / "man1").iterdir()) == sorted(
        p.name for p in (REPO / "man").glob("*.1"))
    found = subprocess.run(["man", "-w", "uiaa-predict"], capture_output=True, text=True,
                           env={**{k: v for k, v in os.environ.items() if k != "MANPATH"},
                                "PATH": f"{prefix / 'bin'}:/usr/bin:/bin"})
    assert found.stdout.strip() == str(prefix / "share" / "man" / "man1" / "uiaa-predict.1")
