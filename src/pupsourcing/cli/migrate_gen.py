"""``pupsourcing migrate-gen``: write the schema as a SQL migration file."""

from __future__ import annotations

import argparse
from typing import Any

from pupsourcing.cli._args import partition_index_count
from pupsourcing.cli._db import add_table_options, store_config
from pupsourcing.cli.errors import CommandError
from pupsourcing.migrations import ADAPTERS, write_migration


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate-gen",
        help="write the event store schema as a SQL migration file",
        description="Write the event store schema for one database into DIR as "
        "<timestamp>_init_event_sourcing.sql (or --filename).",
    )
    parser.add_argument("--adapter", required=True, choices=ADAPTERS)
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument("--filename", metavar="NAME", help="file name instead of the default")
    add_table_options(parser)
    parser.add_argument(
        "--partition-indexes",
        type=partition_index_count,
        metavar="N",
        help="also create one partial index per partition for processors run with "
        "total_partitions=N (postgres and sqlite)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing file of the same name"
    )
    parser.set_defaults(handler=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.partition_indexes is not None and args.adapter == "mysql":
        parser: argparse.ArgumentParser = args.parser
        parser.error("--partition-indexes: MySQL has no partial indexes (postgres and sqlite)")
    try:
        path = write_migration(
            args.adapter,
            args.output,
            filename=args.filename,
            config=store_config(args),
            overwrite=args.force,
            partition_indexes=args.partition_indexes,
        )
    except FileExistsError as exc:
        raise CommandError(f"{exc}; --force replaces it") from None
    print(f"wrote {path}")
    return 0
