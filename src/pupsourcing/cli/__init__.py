"""The ``pupsourcing`` command (also ``python -m pupsourcing``)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pupsourcing import ProjectionError, SchemaError, __version__
from pupsourcing._text import one_line
from pupsourcing.cli import (
    demo,
    eventmap_gen,
    events,
    migrate,
    migrate_gen,
    projections,
    relay,
    signals,
    ui,
)
from pupsourcing.cli._db import driver_error_message, scrub_secrets
from pupsourcing.cli._text import clean_line
from pupsourcing.cli.errors import CommandError
from pupsourcing.urls import DriverNotInstalledError

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pupsourcing",
        description="Event sourcing on PostgreSQL, MySQL/MariaDB and SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"pupsourcing {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, migrate_gen, eventmap_gen, migrate, projections, events, relay, ui):
        module.register(commands)
    return parser


def _error_line(exc: BaseException) -> str | None:
    """The one line to report for ``exc``, or ``None`` to let it propagate."""
    if isinstance(exc, CommandError | ValueError | OSError | DriverNotInstalledError | SchemaError):
        return str(exc)
    if isinstance(exc, ProjectionError):
        cause = exc.__cause__
        return f"{exc}: {type(cause).__name__}: {one_line(cause)}" if cause else str(exc)
    return driver_error_message(exc)


def _escape_unencodable(stream: TextIO) -> None:
    """Characters the output's encoding lacks (an ASCII locale, say) are
    written as escapes instead of failing the command."""
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _escape_unencodable(sys.stdout)
    try:
        with signals.interruptible():
            status: int = args.handler(args)
    except KeyboardInterrupt as exc:
        return signals.interrupted_status(args, exc)
    except BrokenPipeError:
        # The reader went away (``... | head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        line = _error_line(exc)
        if line is None:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
        line = clean_line(scrub_secrets(line, args))  # it may quote stored names
        print(f"pupsourcing {command}: error: {line}", file=sys.stderr)
        return 1
    return status
