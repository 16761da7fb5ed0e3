"""The ``pupsourcing`` command (also ``python -m pupsourcing``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pupsourcing import __version__
from pupsourcing.cli import demo, eventmap_gen, migrate_gen


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pupsourcing",
        description="Event sourcing on PostgreSQL, MySQL/MariaDB and SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"pupsourcing {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, migrate_gen, eventmap_gen):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except (CommandError, ValueError, OSError) as exc:
        print(f"pupsourcing {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status
