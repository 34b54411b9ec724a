"""The ``hyperslab`` command: every command group registered on the one Typer app, in
the order ``hyperslab --help`` lists them, and the console entry point."""

from __future__ import annotations

import sys

# Each module registers its commands on `app` when imported, and `--help` lists them in
# that order: conversion, then access, repository and replication commands.
# isort: off
from hyperslab.cli import convert  # noqa: F401
from hyperslab.cli import access  # noqa: F401
from hyperslab.cli import repo  # noqa: F401
from hyperslab.cli import compress  # noqa: F401
from hyperslab.cli import sync  # noqa: F401
from hyperslab.cli import watch  # noqa: F401
from hyperslab.cli import serve  # noqa: F401

# isort: on
from hyperslab.cli.app import app, teach_help

teach_help(app)

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="hyperslab")


if __name__ == "__main__":
    main()
