"""``pupsourcing migrate``: apply the event store schema to the database."""

from __future__ import annotations

import argparse
from typing import Any

from pupsourcing.cli._db import (
    add_database_options,
    connection,
    open_database,
    parsed_url,
    store_config,
    table_names,
)
from pupsourcing.migrations import generate_sql


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate",
        help="create the event store's tables in the database (idempotent)",
        description="Create the events, aggregate heads and checkpoints tables and their "
        "indexes where they do not exist yet, and add the columns pupsourcing needs to "
        "tables the Go library created. Safe to run again.",
    )
    add_database_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the schema instead of applying it"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        # No connection and no driver needed: the same text migrate-gen writes.
        print(generate_sql(parsed_url(args).adapter, store_config(args)), end="")
        return 0
    db = open_database(args, create=True)
    with connection(db) as conn:
        db.store.create_schema(conn)
        conn.commit()
    config = db.store.config
    tables = ", ".join(table_names(config))
    print(f"schema is in place in {db.url} (tables {tables})")
    return 0
