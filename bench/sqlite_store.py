"""SQLiteStore against raw sqlite3 doing the same SQL work by hand.

Runs W1 (batch append), W2 (single-event append), W2c (8 threads appending)
and W4 (full stream read) on both, through ``bench/common.py``, and prints
events/s or reads/s and the ratio store/raw. Uses a temporary database file
in WAL mode (the store's ``connect``), removed at the end.

The baseline sends what the store sends: the head upsert and one multi-row
``INSERT ... RETURNING`` (the store adds a savepoint only inside a
transaction the caller opened); reads run the same SELECT and keep the rows
as tuples.

    python bench/sqlite_store.py [--quick] [--rounds N] [--only W1,W4]
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from common import Side, Target, main

from pupsourcing import Event
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.core.hashing import partition_hash

COLUMNS = (
    "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, "
    "event_version, payload, trace_id, correlation_id, causation_id, metadata, created_at, "
    "partition_hash"
)
CLAIM = (
    "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
    "aggregate_version, updated_at) VALUES (?, ?, ?, ?, datetime('now')) "
    "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE SET "
    "aggregate_version = aggregate_version + excluded.aggregate_version, "
    "updated_at = excluded.updated_at RETURNING aggregate_version"
)
READ = SQLiteStore().dialect.read_stream_sql
"""The store's own SELECT of a whole stream, so both sides read the same."""


@lru_cache(maxsize=16)
def insert_sql(rows: int) -> str:
    row = f"({', '.join('?' * 14)})"
    return (
        f"INSERT INTO events ({COLUMNS}) VALUES {', '.join([row] * rows)} RETURNING global_position"
    )


def raw_append(conn: sqlite3.Connection, events: Sequence[Event]) -> object:
    first = events[0]
    key = (first.bounded_context, first.aggregate_type, first.aggregate_id)
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    version = conn.execute(CLAIM, (*key, len(events))).fetchone()[0] - len(events)
    hashed = partition_hash(first.aggregate_id)
    params: list[Any] = []
    for i, e in enumerate(events, 1):
        params += (
            *key,
            version + i,
            str(e.event_id),
            e.event_type,
            e.event_version,
            e.payload,
            e.trace_id,
            e.correlation_id,
            e.causation_id,
            None if e.metadata is None else e.metadata.decode(),
            e.created_at.isoformat(" ", "microseconds")[:26],
            hashed,
        )
    return conn.execute(insert_sql(len(events)), params).fetchall()


def raw_read_stream(
    conn: sqlite3.Connection, bounded_context: str, aggregate_type: str, aggregate_id: str
) -> list[Any]:
    return conn.execute(READ, (bounded_context, aggregate_type, aggregate_id)).fetchall()


def build() -> Target:
    directory = Path(tempfile.mkdtemp(prefix="pupsourcing-bench-"))
    path = directory / "bench.db"
    store = SQLiteStore()
    with connect(path) as conn:
        store.create_schema(conn)

    def open_connection(autocommit: bool) -> sqlite3.Connection:
        # W2c hands connections made here to worker threads.
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        if autocommit:
            conn.isolation_level = None
        return conn

    def reset(conn: sqlite3.Connection) -> None:
        for table in ("events", "aggregate_heads", "projection_checkpoints"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM sqlite_sequence")

    return Target(
        database=f"SQLite {sqlite3.sqlite_version} (stdlib sqlite3, WAL, synchronous=FULL)",
        connect=open_connection,
        store=store,
        raw=Side(raw_append, raw_read_stream),
        reset=reset,
        close=lambda: shutil.rmtree(directory, ignore_errors=True),
        notes=[
            "raw append: BEGIN IMMEDIATE, head upsert RETURNING, one multi-row INSERT "
            "RETURNING (the store adds validation)",
            "raw read: the same SELECT, rows kept as tuples",
            "SQLite has one writer: W2c measures lock hand-over, not parallelism",
        ],
    )


if __name__ == "__main__":
    sys.exit(main(build))
