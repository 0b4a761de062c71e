"""The command layer: one module per subcommand (parse, call the library, report); nothing else lives here."""

from uiaa_cli.cli.app import app, main

__all__ = ["app", "main"]
