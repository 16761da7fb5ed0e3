"""PostgresStore against raw psycopg 3 doing the same SQL work by hand.

Runs W1 (batch append), W2 (single-event append), W2c (8 threads appending)
and W4 (full stream read) on both and prints events/s or reads/s and the
ratio store/raw. Uses its own schema (dropped at the end) on the server named
by ``PUPSOURCING_BENCH_PG`` (default: the test server on 127.0.0.1:5432).

    python bench/postgres_store.py [--quick] [--rounds N] [--only W1,W4] [--against-quiet]

``--against-quiet`` replaces the raw baseline by the store itself with
``notify=False``: store/raw is then what push wake-up's ``pg_notify`` costs
the writers (W2c shows it: NOTIFY serializes commits).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from common import Side, Target, Unavailable, main, store_side

from pupsourcing import Event
from pupsourcing.adapters.postgres import PostgresStore

DSN = os.environ.get(
    "PUPSOURCING_BENCH_PG",
    os.environ.get("PUPSOURCING_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test"),
)

HEAD_UPSERT = (
    "INSERT INTO aggregate_heads AS h "
    "(bounded_context, aggregate_type, aggregate_id, aggregate_version, updated_at) "
    "VALUES (%s, %s, %s, %s, now()) "
    "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE SET "
    "aggregate_version = h.aggregate_version + EXCLUDED.aggregate_version, updated_at = now() "
    "RETURNING aggregate_version"
)


EVENT_COLUMNS = (
    "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, "
    "event_version, payload, trace_id, correlation_id, causation_id, metadata, created_at"
)
ROW_COLUMNS = (
    "event_id, event_type, event_version, payload, trace_id, correlation_id, causation_id, "
    "metadata, created_at"
)
FEW_EVENTS = 5
"""Up to this many events the raw baseline sends a multi-row VALUES list, beyond
it one binary array per column (each is the faster of the two there)."""


@lru_cache(maxsize=16)
def raw_values_sql(rows: int) -> str:
    """Head upsert and a multi-row INSERT ... VALUES of the events, in one statement."""
    values = ", ".join(f"({i}, %s, %s, %s, %s, %s, %s, %s, %s, %s)" for i in range(1, rows + 1))
    return (
        f"WITH head AS ({HEAD_UPSERT}) INSERT INTO events ({EVENT_COLUMNS}) "
        f"SELECT %s, %s, %s, head.aggregate_version - {rows} + v.ord, v.event_id, v.event_type, "
        "v.event_version, v.payload, v.trace_id, v.correlation_id, v.causation_id, "
        "v.metadata::jsonb, v.created_at "
        f"FROM head, (VALUES {values}) AS v(ord, {ROW_COLUMNS}) "
        "RETURNING global_position"
    )


RAW_ARRAYS_SQL = (
    f"WITH head AS ({HEAD_UPSERT}) INSERT INTO events ({EVENT_COLUMNS}) "
    "SELECT %s, %s, %s, head.aggregate_version - %s + v.ord, v.event_id, v.event_type, "
    "v.event_version, v.payload, v.trace_id, v.correlation_id, v.causation_id, "
    "v.metadata::jsonb, v.created_at "
    "FROM head, unnest(%b::uuid[], %b::text[], %b::int[], %b::bytea[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::timestamptz[]) WITH ORDINALITY "
    f"AS v({ROW_COLUMNS}, ord) "
    "RETURNING global_position"
)


def _raw_row(e: Event) -> tuple[Any, ...]:
    """One event's values for ``ROW_COLUMNS``, in that order."""
    return (
        e.event_id,
        e.event_type,
        e.event_version,
        e.payload,
        e.trace_id,
        e.correlation_id,
        e.causation_id,
        None if e.metadata is None else e.metadata.decode(),
        e.created_at,
    )


def raw_append_statement(events: Sequence[Event]) -> tuple[str, list[Any]]:
    """The raw baseline's one statement for an append, and its parameters
    (also sent by the asyncio baseline of ``async_vs_sync.py``)."""
    first = events[0]
    key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
    if len(events) > FEW_EVENTS:
        columns = [list(column) for column in zip(*map(_raw_row, events), strict=True)]
        return RAW_ARRAYS_SQL, [*key, len(events), *key, len(events), *columns]
    values: list[Any] = [*key, len(events), *key]
    for e in events:
        values += _raw_row(e)
    return raw_values_sql(len(events)), values


def raw_append(conn: Any, events: Sequence[Event]) -> object:
    sql, params = raw_append_statement(events)
    return conn.execute(sql, params).fetchall()


RAW_READ_SQL = PostgresStore().dialect.read_stream_sql
"""The store's own SELECT of a whole stream (the key columns are left out:
the caller knows them), so both sides ask the server for the same rows."""


def raw_read_stream(
    conn: Any, bounded_context: str, aggregate_type: str, aggregate_id: str
) -> list[Any]:
    cursor = conn.execute(
        RAW_READ_SQL, (bounded_context, aggregate_type, aggregate_id), binary=True
    )
    rows: list[Any] = cursor.fetchall()
    return rows


@dataclass
class PrivateSchema:
    """A schema with a random name holding the store's tables, on the server."""

    admin: Any
    """An autocommit connection outside the schema."""
    name: str
    dsn: str
    """Connects into the schema."""

    def close(self) -> None:
        self.admin.execute(f"DROP SCHEMA {self.name} CASCADE")
        self.admin.close()


def private_schema() -> PrivateSchema:
    import psycopg

    try:
        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise Unavailable(str(exc).strip()) from exc
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {name}")
    schema = PrivateSchema(admin, name, f"{DSN} options='-c search_path={name}'")
    try:
        with psycopg.connect(schema.dsn, autocommit=True) as conn:
            PostgresStore().create_schema(conn)
    except BaseException:
        schema.close()
        raise
    return schema


def reset(conn: Any) -> None:
    conn.execute("TRUNCATE events, aggregate_heads, projection_checkpoints RESTART IDENTITY")


def describe(admin: Any) -> str:
    import psycopg

    server = admin.execute("SHOW server_version").fetchone()
    return (
        f"PostgreSQL {server[0] if server else '?'} "
        f"(psycopg {psycopg.__version__}, {psycopg.pq.__impl__} libpq)"
    )


def build(against_quiet: bool = False) -> Target:
    import psycopg

    schema = private_schema()
    sync = schema.admin.execute("SHOW synchronous_commit").fetchone()

    def connect(autocommit: bool) -> Any:
        return psycopg.connect(schema.dsn, autocommit=autocommit)

    if against_quiet:
        return Target(
            database=describe(schema.admin),
            connect=connect,
            store=PostgresStore(),
            raw=store_side(PostgresStore(notify=False)),
            reset=reset,
            close=schema.close,
            notes=[
                "raw: PostgresStore(notify=False), the same append without pg_notify",
                f"synchronous_commit={sync[0] if sync else '?'}; schema {schema.name} (dropped)",
            ],
        )
    return Target(
        database=describe(schema.admin),
        connect=connect,
        store=PostgresStore(),
        raw=Side(raw_append, raw_read_stream),
        reset=reset,
        close=schema.close,
        notes=[
            "raw append: one statement per transaction, head upsert + INSERT of the same "
            f"rows RETURNING global_position; up to {FEW_EVENTS} events as a multi-row VALUES "
            "list, more as binary arrays unnested on the server (the faster way for each)",
            "raw read: the same SELECT (same columns and order), binary results, fetchall; "
            "rows stay tuples",
            f"synchronous_commit={sync[0] if sync else '?'}; schema {schema.name} (dropped)",
        ],
    )


if __name__ == "__main__":
    quiet = "--against-quiet" in sys.argv
    if quiet:
        sys.argv.remove("--against-quiet")
    sys.exit(main(lambda: build(quiet)))
