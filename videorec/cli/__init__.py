"""The ``videorec`` command line (``videorec.cli.app``); one module per command."""

from videorec.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
