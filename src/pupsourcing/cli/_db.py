"""What every command that opens the store shares: ``--db`` and the table
names, opening connections, and driver errors as one line, never showing
a password or other secret from the URL."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from pupsourcing._text import one_line
from pupsourcing.cli.errors import CommandError
from pupsourcing.store import StoreConfig
from pupsourcing.store.config import validate_identifier
from pupsourcing.store.layout import check_layout, missing_table
from pupsourcing.urls import (
    ENV_VAR,
    Database,
    DatabaseURL,
    DatabaseURLError,
    database,
    parse_url,
)

_DRIVER_MODULES = frozenset({"sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb"})

MIGRATE_HINT = "run `pupsourcing migrate` to create the store's tables"

BUSY_HINT = (
    "another connection held SQLite's write lock for longer than the busy timeout "
    "(set with ?timeout=SECONDS in the URL; default 5)"
)

NO_DATABASE = (
    f"no database named: pass --db URL or set {ENV_VAR} "
    "(e.g. sqlite:///shop.db, postgresql://user:password@host/dbname)"
)


def add_table_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--events-table`` and friends, as ``migrate-gen`` spells them: a name
    that is no valid table name is a usage error (exit 2) naming the flag."""
    defaults = StoreConfig()
    for field in dataclasses.fields(StoreConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            default=getattr(defaults, field.name),
            type=_table_name(field.name),
            metavar="T",
        )


def _table_name(field: str) -> Callable[[str], str]:
    def table_name(text: str) -> str:
        try:
            return validate_identifier(field, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return table_name


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--db URL`` and the table names. There is no default database: a
    command run without ``--db`` or ``$PUPSOURCING_DB`` exits 2 (a usage
    error, reported by ``parser``) instead of guessing one."""
    group = parser.add_argument_group("database")
    group.add_argument(
        "--db",
        metavar="URL",
        help=f"postgresql://..., mysql://... or sqlite:///path (default: ${ENV_VAR}; "
        "one of the two is required)",
    )
    add_table_options(group)
    parser.set_defaults(parser=parser)


def table_names(config: StoreConfig) -> tuple[str, ...]:
    """Every table of ``config``: the Go library's three, then pupsourcing's own."""
    go = ("events_table", "aggregate_heads_table", "checkpoints_table")
    own = [f.name for f in dataclasses.fields(config) if f.name not in go]
    return tuple(getattr(config, name) for name in (*go, *own))


def store_config(args: argparse.Namespace) -> StoreConfig:
    return StoreConfig(
        events_table=args.events_table,
        checkpoints_table=args.checkpoints_table,
        aggregate_heads_table=args.aggregate_heads_table,
        snapshots_table=args.snapshots_table,
        dead_letters_table=args.dead_letters_table,
        layouts_table=args.layouts_table,
        leases_table=args.leases_table,
    )


def _given_url(args: argparse.Namespace) -> str | None:
    """``--db``, else ``$PUPSOURCING_DB``, else ``None`` (empty counts as unset)."""
    return str(args.db or os.environ.get(ENV_VAR) or "") or None


def database_url(args: argparse.Namespace) -> str:
    """``--db``, else ``$PUPSOURCING_DB``; neither is a usage error (exit 2)
    saying how to name one. Only ``demo`` has a default database."""
    url = _given_url(args)
    if url is None:
        parser: argparse.ArgumentParser = args.parser
        parser.error(NO_DATABASE)
    return url


def parsed_url(args: argparse.Namespace) -> DatabaseURL:
    try:
        return parse_url(database_url(args))
    except DatabaseURLError as exc:
        raise CommandError(f"bad database URL: {exc}") from None


def open_database(args: argparse.Namespace, *, create: bool = False) -> Database:
    """The store and connection factory ``args`` name; nothing connected yet.

    A SQLite file is created only with ``create`` (``migrate``): every other
    command reports a missing file instead of leaving an empty one behind.
    """
    url = parsed_url(args)
    return database(url, store_config(args), create=create)


def connect(db: Database) -> Any:
    """A new connection, or a one-line :class:`CommandError` saying why not."""
    try:
        return db.connect()
    except FileNotFoundError as exc:
        raise CommandError(f"cannot open {db.url}: {exc}; {MIGRATE_HINT}") from None
    except Exception as exc:
        if not is_driver_error(exc):
            raise
        raise CommandError(f"cannot connect to {db.url}: {db.url.scrub(one_line(exc))}") from None


def close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


@contextlib.contextmanager
def connection(db: Database) -> Iterator[Any]:
    """A connection for the duration of a command; closed afterwards."""
    conn = connect(db)
    try:
        yield conn
    finally:
        close_quietly(conn)


def check_store(db: Database) -> int:
    """Connect once and read the store head: fails early, with one line, on a
    bad URL, an unreachable server or missing tables. Returns the head."""
    with connection(db) as conn:
        head = db.store.head_position(conn)
        conn.rollback()
    return head


def check_layouts(db: Database, names: list[str], total_partitions: int) -> None:
    """The partition layout guard for ``names`` run with ``total_partitions``,
    before any worker starts: a :class:`~pupsourcing.PartitionLayoutError`
    here stops the command at once instead of every worker in turn."""
    with connection(db) as conn:
        for name in names:
            db.store._run(conn, check_layout(db.store.dialect, name, total_partitions))


def create_partition_indexes(db: Database, total_partitions: int) -> list[str]:
    """``--create-indexes``: create the partition indexes for
    ``total_partitions`` that are missing, before any worker starts; returns
    their names (none on MySQL, which has no partial indexes). The store
    is live: on PostgreSQL they are built without locking out appends
    (``CREATE INDEX CONCURRENTLY``, which needs autocommit)."""
    dialect = db.store.dialect
    online = dialect.builds_indexes_online
    with connection(db) as conn:
        if online:
            conn.autocommit = True
            _refuse_pooled_session(conn)
        missing: list[str] = db.store._run(
            conn, dialect.missing_partition_indexes(total_partitions)
        )
        if missing:
            db.store._run(conn, dialect.create_partition_indexes(total_partitions, online=online))
        conn.commit()
    return missing


def _refuse_pooled_session(conn: Any) -> None:
    """The online build holds a session advisory lock across transactions,
    which a pooler in transaction mode (PgBouncer) would take on one server
    connection and release (or not) on another: the lock would stay held
    and every later build wait for it forever. A pooler shows in the
    backend id it gives the client, which is not the server's."""
    told = getattr(getattr(conn, "info", None), "backend_pid", None)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if told is not None and row is not None and int(row[0]) != int(told):
        raise CommandError(
            "--create-indexes holds a session advisory lock while it builds, which "
            "needs a session of its own: this connection goes through a connection "
            "pooler (PgBouncer?); run it on a direct connection to PostgreSQL (or "
            "through session pooling), then run the workers through the pooler"
        )


def report_created_indexes(logger: logging.Logger, db: Database, created: list[str]) -> None:
    """Log what :func:`create_partition_indexes` did."""
    if created:
        logger.info("created the partition indexes %s", ", ".join(created))
    elif not db.store.dialect.schema_dialect.partial_indexes:
        name = db.store.dialect.name
        logger.info("%s has no partial indexes: no partition indexes to create", name)
    else:
        logger.info("the partition indexes are there already")


def scrub_secrets(text: str, args: argparse.Namespace) -> str:
    """``text`` without the secrets of the URL ``args`` name (drivers may
    quote them); unchanged for a command without ``--db`` or a bad URL,
    whose errors quote nothing of it."""
    given = _given_url(args) if hasattr(args, "db") else None
    if given is None:
        return text
    try:
        url = parse_url(given)
    except DatabaseURLError:
        return text
    return url.scrub(text)


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a database driver (a DB-API error)."""
    return type(exc).__module__.partition(".")[0] in _DRIVER_MODULES


def driver_error_message(exc: BaseException) -> str | None:
    """One line for a driver error raised while a command ran, or ``None``
    when ``exc`` is not a driver error."""
    if not is_driver_error(exc):
        return None
    message = f"database error: {one_line(exc)}"
    if missing_table(exc):
        message += f"; {MIGRATE_HINT}"
    elif (getattr(exc, "sqlite_errorname", None) or "").startswith("SQLITE_BUSY"):
        message += f"; {BUSY_HINT}"
    return message
