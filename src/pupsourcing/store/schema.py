"""The event store schema, written once for every database.

The tables, columns, constraints and indexes are the Go library's, so a Go
service and a Python service can share one store; only the column types and a
few syntax details differ per database (:class:`SchemaDialect`). pupsourcing
adds a few nullable columns (:func:`added_columns`) that the Go library
neither reads nor needs to write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pupsourcing.store.columns import EVENTS
from pupsourcing.store.config import StoreConfig


@dataclass(frozen=True, slots=True)
class SchemaDialect:
    """Column types and DDL syntax of one database."""

    global_position: str
    """Auto-incrementing primary key, e.g. ``BIGSERIAL PRIMARY KEY``."""
    key_text: str
    """Contexts, types, ids and names that are part of a key."""
    text: str
    """Other text: event_type and the trace/correlation/causation ids."""
    bigint: str
    int: str
    uuid: str
    payload: str
    metadata: str
    timestamp: str
    """Creation time, defaulting to now."""
    updated_timestamp: str
    """Last-change time, defaulting to now."""
    table_options: str = ""
    inline_indexes: bool = False
    """Declare indexes inside CREATE TABLE (MySQL has no CREATE INDEX IF NOT EXISTS)."""
    partial_indexes: bool = True
    add_column_if_not_exists: bool = True
    """Whether ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` exists (not in SQLite
    or MySQL 8); without it ``create_schema`` checks the columns first."""
    metadata_raw: bool = False
    """Keep metadata bytes in ``metadata_raw`` when the JSON column reformats them."""

    @property
    def types(self) -> Mapping[str, str]:
        """The SQL type of each type key of :mod:`~pupsourcing.store.columns`."""
        return {
            "global_position": self.global_position,
            "key_text": self.key_text,
            "text": self.text,
            "bigint": self.bigint,
            "int": self.int,
            "uuid": self.uuid,
            "payload": self.payload,
            "metadata": self.metadata,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True, slots=True)
class SchemaStatement:
    """One idempotent DDL statement and what it makes: a ``table``, an
    ``index`` or a ``column`` called ``name`` on ``table`` (a table's
    ``name`` is ``table``; both unquoted), so a dialect can tell from its
    catalog whether the statement is needed without reading the SQL."""

    kind: Literal["table", "index", "column"]
    table: str
    name: str
    comment: str
    sql: str


def pairs(statements: Iterable[SchemaStatement]) -> list[tuple[str, str]]:
    """The statements as ``(comment, sql)`` pairs."""
    return [(s.comment, s.sql) for s in statements]


def create_table(
    quote: Callable[[str], str], d: SchemaDialect, name: str, comment: str, columns: list[str]
) -> SchemaStatement:
    """``CREATE TABLE IF NOT EXISTS`` of ``name`` with ``columns`` (column
    definitions and constraints, one a line)."""
    body = ",\n".join(f"    {column}" for column in columns)
    return SchemaStatement(
        "table",
        name,
        name,
        comment,
        f"CREATE TABLE IF NOT EXISTS {quote(name)} (\n{body}\n){d.table_options}",
    )


@dataclass(frozen=True, slots=True)
class AddedColumn:
    """A nullable column pupsourcing adds to the Go library's events table."""

    name: str
    type: str
    purpose: str


def added_columns(d: SchemaDialect) -> list[AddedColumn]:
    columns = [
        AddedColumn(
            "partition_hash",
            d.bigint,
            "FNV-1a 32-bit hash of aggregate_id, so partitioned projections filter "
            "in SQL (NULL in rows the Go library wrote; those are filtered in Python).",
        )
    ]
    if d.metadata_raw:
        columns.append(
            AddedColumn(
                "metadata_raw",
                "TEXT",
                "The metadata exactly as appended, kept only when the JSON column "
                "reformats it (key order, spacing), so reads return the caller's bytes.",
            )
        )
    return columns


Index = tuple[str, str, str, str]
"""(name suffix, column list, WHERE clause or "", purpose)."""


def add_column_statements(
    config: StoreConfig, quote: Callable[[str], str], d: SchemaDialect
) -> list[SchemaStatement]:
    """``ALTER TABLE ... ADD COLUMN`` of each of :func:`added_columns`, for
    events tables the Go library created; idempotent only where the
    database has ``ADD COLUMN IF NOT EXISTS``."""
    guard = " IF NOT EXISTS" if d.add_column_if_not_exists else ""
    table = config.events_table
    return [
        SchemaStatement(
            "column",
            table,
            column.name,
            f"{column.purpose} Added here to tables created by the Go library.",
            f"ALTER TABLE {quote(table)} ADD COLUMN{guard} {column.name} {column.type}",
        )
        for column in added_columns(d)
    ]


def schema_statements(
    config: StoreConfig, quote: Callable[[str], str], d: SchemaDialect
) -> list[SchemaStatement]:
    """The DDL, every statement idempotent.

    Where the database cannot add a column idempotently, the statements that
    upgrade tables created by the Go library are left out (see
    :func:`add_column_statements`).
    """
    extra = added_columns(d)
    types = d.types
    events_columns = [
        *(column.ddl(types) for column in EVENTS),
        *(f"{column.name} {column.type}" for column in extra),
    ]
    version_key = "bounded_context, aggregate_type, aggregate_id, aggregate_version"
    events_unique = (
        f"UNIQUE KEY unique_aggregate_version ({version_key})"
        if d.inline_indexes
        else f"UNIQUE ({version_key})"
    )
    events_indexes: list[Index] = [
        ("aggregate", version_key, "", "Reading one aggregate's stream."),
        ("event_type", "event_type, global_position", "", "Reading events of one type in order."),
        (
            "correlation",
            "correlation_id",
            "correlation_id IS NOT NULL",
            "Following a correlation id.",
        ),
    ]
    heads_columns = [
        f"bounded_context {d.key_text} NOT NULL",
        f"aggregate_type {d.key_text} NOT NULL",
        f"aggregate_id {d.key_text} NOT NULL",
        f"aggregate_version {d.bigint} NOT NULL",
        f"updated_at {d.updated_timestamp}",
        "PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)",
    ]
    checkpoints_columns = [
        f"projection_name {d.key_text} PRIMARY KEY",
        f"last_global_position {d.bigint} NOT NULL DEFAULT 0",
        f"updated_at {d.updated_timestamp}",
    ]
    updated: list[Index] = [("updated", "updated_at", "", "Finding rows by last change.")]

    statements: list[SchemaStatement] = []

    def table(comment: str, name: str, columns: list[str], indexes: list[Index]) -> None:
        named = [(f"idx_{name}_{suffix}", cols, where, why) for suffix, cols, where, why in indexes]
        if d.inline_indexes:
            columns = columns + [f"INDEX {quote(index)} ({cols})" for index, cols, _, _ in named]
        statements.append(create_table(quote, d, name, comment, columns))
        if d.inline_indexes:
            return
        for index, cols, where, why in named:
            condition = f" WHERE {where}" if where and d.partial_indexes else ""
            statements.append(
                SchemaStatement(
                    "index",
                    name,
                    index,
                    why,
                    f"CREATE INDEX IF NOT EXISTS {quote(index)}\n"
                    f"    ON {quote(name)} ({cols}){condition}",
                )
            )

    table(
        "Events: the append-only log. global_position orders all events; the unique "
        "key allows one event per aggregate version (optimistic concurrency).",
        config.events_table,
        [*events_columns, events_unique],
        events_indexes,
    )
    if d.add_column_if_not_exists:
        statements += add_column_statements(config, quote, d)
    table(
        "Aggregate heads: the current version of each aggregate, checked and bumped "
        "by every append.",
        config.aggregate_heads_table,
        heads_columns,
        updated,
    )
    table(
        "Projection checkpoints: the last global position each projection handled.",
        config.checkpoints_table,
        checkpoints_columns,
        updated,
    )
    table(
        "Projection dead letters (pupsourcing only; the Go library ignores this table): "
        "what a projection set aside after its handler failed on it max_attempts times, "
        "with the error, under the projection's checkpoint name.",
        config.dead_letters_table,
        dead_letter_columns(d),
        [],
    )
    table(
        "Projection partition layouts (pupsourcing only; the Go library ignores this "
        "table): the total_partitions each projection's checkpoints were made with, so "
        "a processor started with another count stops before it handles anything.",
        config.layouts_table,
        [
            f"projection_name {d.key_text} PRIMARY KEY",
            f"total_partitions {d.int} NOT NULL",
            f"recorded_at {d.timestamp}",
        ],
        [],
    )
    return statements


def dead_letter_columns(d: SchemaDialect) -> list[str]:
    """The dead-letters table: one row per (checkpoint name, event). Message
    and traceback are ``TEXT`` everywhere (the writer truncates them to fit)."""
    return [
        f"projection_name {d.key_text} NOT NULL",
        f"global_position {d.bigint} NOT NULL",
        f"event_id {d.uuid} NOT NULL",
        f"error_type {d.text} NOT NULL",
        "error_message TEXT NOT NULL",
        "traceback TEXT NOT NULL",
        f"attempts {d.int} NOT NULL",
        f"failed_at {d.timestamp}",
        "PRIMARY KEY (projection_name, global_position)",
    ]


MAX_PARTITION_INDEXES = 256
"""More partitions than this would make every append update too many indexes."""


def partition_predicate(total_partitions: int, partition_key: int, modulo: str = "%") -> str:
    """The rows of one partition, as SQL: its hashed aggregates, and rows the
    Go library wrote without a hash (the processor decides those itself).

    The processor's fetch and the partition indexes spell it the same way,
    numbers inline: PostgreSQL and SQLite use a partial index only for a query
    that repeats the index's condition (``modulo`` is ``%%`` where the driver
    takes ``%`` for a placeholder)."""
    total, key = int(total_partitions), int(partition_key)
    return f"(partition_hash {modulo} {total} = {key} OR partition_hash IS NULL)"


def partition_index_name(events_table: str, total_partitions: int, partition_key: int) -> str:
    """The name of one partition index (unquoted)."""
    return f"idx_{events_table}_part{total_partitions}_{partition_key}"


def partition_index_statements(
    config: StoreConfig, quote: Callable[[str], str], d: SchemaDialect, total_partitions: int
) -> list[SchemaStatement]:
    """One partial index on ``global_position`` per partition of
    ``total_partitions``: a partitioned processor then reads only its own
    partition's index entries instead of stepping over every other
    partition's rows."""
    if not d.partial_indexes:
        raise ValueError(
            "total_partitions: partition indexes are partial indexes, which this "
            "database does not have; partitioned projections filter without them"
        )
    if (
        isinstance(total_partitions, bool)
        or not isinstance(total_partitions, int)
        or not 2 <= total_partitions <= MAX_PARTITION_INDEXES
    ):
        raise ValueError(
            f"total_partitions: must be an int from 2 to {MAX_PARTITION_INDEXES}, "
            f"got {total_partitions!r}"
        )
    table = config.events_table
    names = (partition_index_name(table, total_partitions, key) for key in range(total_partitions))
    return [
        SchemaStatement(
            "index",
            table,
            name,
            f"Partition {key} of {total_partitions}: the processor with partition_key={key}, "
            f"total_partitions={total_partitions} reads its events through this index.",
            f"CREATE INDEX IF NOT EXISTS {quote(name)}"
            f"\n    ON {quote(table)} (global_position)"
            f" WHERE {partition_predicate(total_partitions, key)}",
        )
        for key, name in enumerate(names)
    ]
