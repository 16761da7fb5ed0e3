"""``pupsourcing eventmap-gen``: generate the typed event mapping module."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pupsourcing.eventmap import DEFAULT_FILENAME, check_mapping, write_mapping


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "eventmap-gen",
        help="generate typed mapping code between domain event dataclasses and store events",
        description="Read the domain event dataclasses in the version folders v1/, v2/, ... "
        "of DIR (the folder is the event_version, the class name the event_type) and write "
        "one Python module that maps them to and from pupsourcing events. The generated "
        "module imports the event classes by absolute module name (--package plus the path "
        "under DIR), so it can live anywhere the input package is importable.",
    )
    parser.add_argument(
        "--input", required=True, metavar="DIR", help="directory holding the version folders"
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="directory to write the module into"
    )
    parser.add_argument(
        "--package",
        metavar="NAME",
        help="dotted import name of the input directory (default: found from the "
        "__init__.py files of DIR and its parents)",
    )
    parser.add_argument(
        "--filename",
        default=DEFAULT_FILENAME,
        metavar="NAME",
        help=f"name of the generated module file (default: {DEFAULT_FILENAME})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the module is missing or out of date",
    )
    mode.add_argument(
        "--force",
        action="store_true",
        help="replace an existing file even if eventmap-gen did not write it",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        path, fresh = check_mapping(
            args.input, args.output, package=args.package, filename=args.filename
        )
        if not fresh:
            print(
                f"pupsourcing eventmap-gen: {path} is missing or out of date; "
                "run eventmap-gen without --check to regenerate it",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    path, changed = write_mapping(
        args.input,
        args.output,
        package=args.package,
        filename=args.filename,
        force=args.force,
    )
    print(f"wrote {path}" if changed else f"{path} is up to date")
    return 0
