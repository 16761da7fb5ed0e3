"""A store the Go library created, before pupsourcing's ``create_schema``.

The Go schema lacks the nullable columns pupsourcing adds (``partition_hash``
everywhere, ``metadata_raw`` on PostgreSQL). Whatever reads or writes them
fails with a :class:`~pupsourcing.SchemaError` that names the column and
says to run ``create_schema`` once; after it, Go's rows read back as events.
Each backend and both APIs, with the tables as the Go library creates them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import APIS, made_backend
from helpers import event, query
from pupsourcing import ExpectedVersion, PersistedEvent, SchemaError
from pupsourcing.projection import ProcessorConfig

GO_SQLITE = [  # the Go library's SQLite migration, tables as it creates them
    """CREATE TABLE events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    metadata TEXT,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
)""",
    """CREATE TABLE aggregate_heads (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
)""",
    """CREATE TABLE projection_checkpoints (
    projection_name TEXT PRIMARY KEY,
    last_global_position INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (datetime('now'))
)""",
]


def replace_with_go_schema(conn: Any, name: str) -> None:
    """Drop the store's three Go tables on ``conn`` and create them as the
    Go library's migration does (uncommitted)."""
    for table in ("events", "aggregate_heads", "projection_checkpoints"):
        query(conn, f"DROP TABLE {table}")
    for sql in go_schema(name):
        query(conn, sql)


def go_schema(name: str) -> list[str]:
    if name == "postgres":
        from test_postgres_store import GO_DDL

        return [GO_DDL]
    if name == "mysql":
        from test_mysql_store import GO_SCHEMA

        return GO_SCHEMA
    return GO_SQLITE


class Seen:
    name = "seen"

    def __init__(self) -> None:
        self.events: list[PersistedEvent] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.events.append(event)


@pytest.mark.filterwarnings("ignore::pupsourcing.adapters.mysql.CollationWarning")  # Go's tables
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_a_go_created_store_asks_for_create_schema_once(
    name: str, api: str, tmp_path: Path
) -> None:
    with made_backend(name, tmp_path) as b:
        conn = b.connection()
        replace_with_go_schema(conn, name)
        go_id = uuid.uuid4()
        mark = "?" if name == "sqlite" else "%s"
        query(
            conn,
            "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, event_id, event_type, payload, metadata) "
            f"VALUES ('Shop', 'Order', 'go-1', 1, {mark}, 'Placed', {mark}, '{{}}')",
            (go_id.bytes if name == "mysql" else str(go_id), b"{}"),
        )
        query(
            conn,
            "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version) VALUES ('Shop', 'Order', 'go-1', 1)",
        )
        conn.commit()
        if api == "async":
            b.use_async()
        store, conn = b.store, b.connection()

        def refused(column: str, call: Any, *args: Any) -> None:
            with pytest.raises(SchemaError) as caught:
                call(*args)
            conn.rollback()  # PostgreSQL aborted the transaction
            error = caught.value
            assert (error.table, error.column) == ("events", column)
            assert "create_schema" in str(error)
            assert "pupsourcing migrate" in str(error)
            assert error.__cause__ is not None

        # What the Go schema lacks: metadata_raw is read and written on
        # PostgreSQL; partition_hash is written by every append, and read by
        # partitioned projections.
        missing = "metadata_raw" if name == "postgres" else "partition_hash"
        refused(missing, store.append, conn, ExpectedVersion.exact(1), [event("go-1")])
        refused(missing, store.append, conn, ExpectedVersion.no_stream(), [event("py-1")])
        partitioned = ProcessorConfig(total_partitions=2)
        with b.Processor(b.connect, store, partitioned) as processor:
            refused(missing, processor.catch_up, Seen())
        if name == "postgres":
            refused(missing, store.read_events, conn, 0, 10)
            refused(missing, store.read_aggregate_stream, conn, "Shop", "Order", "go-1")
            unpartitioned = Seen()
            unpartitioned.name = "seen_whole"  # "seen" is laid out in 2 partitions now
            with b.Processor(b.connect, store) as processor:
                refused(missing, processor.catch_up, unpartitioned)
        else:  # reads only the Go library's columns
            assert [e.event_id for e in store.read_events(conn, 0, 10)] == [go_id]
            assert store.read_aggregate_stream(conn, "Shop", "Order", "go-1").version == 1
        assert b.count_events() == 1

        store.create_schema(conn)
        conn.commit()
        store.append(conn, ExpectedVersion.exact(1), [event("go-1", "Paid")])
        conn.commit()
        stream = store.read_aggregate_stream(conn, "Shop", "Order", "go-1")
        assert [(e.event_type, e.aggregate_version) for e in stream] == [
            ("Placed", 1),
            ("Paid", 2),
        ]
        assert stream.events[0].event_id == go_id
        assert stream.events[0].payload == b"{}"
        assert stream.events[0].metadata == b"{}"
        handled: list[int] = []
        for key in range(2):
            seen = Seen()
            config = ProcessorConfig(partition_key=key, total_partitions=2)
            with b.Processor(b.connect, store, config) as processor:
                processor.catch_up(seen)
            handled += [e.global_position for e in seen.events]
        assert sorted(handled) == [1, 2]
