"""The man pages in man/ are the ones the commands generate now (run `make man` after changing help)."""

from __future__ import annotations

import shutil
import subprocess
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
