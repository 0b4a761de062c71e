"""--help is read by people: option types are words (TEXT, INTEGER, PATH, LIST), not Python annotations."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from uiaa_cli.cli.app import app

COMMANDS = ("labels", "evaluate", "convert", "cache", "train", "predict", "dedupe", "rate")


@pytest.mark.parametrize("command", COMMANDS)
def test_option_types_are_words(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(str|int|float|path|bool|list\[[^>]*\])>", result.output), result.output
    assert re.search(r"--\S+ (TEXT|INTEGER|NUMBER|PATH|LIST|\[[a-z0-9|-]+\])\b", result.output)


def test_the_words_by_type():
    result = CliRunner().invoke(app, ["predict", "--help"], terminal_width=100)
    for shown in ("-m, --model TEXT", "--batch-size INTEGER", "--to [csv|tsv|parquet|h5]", "INPUTS LIST"):
        assert shown in result.output
    assert "--plot PATH" in CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=100).output
