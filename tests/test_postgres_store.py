"""PostgreSQL-specific behaviour of PostgresStore, against the real server.

The store contract itself runs on every database in test_store_contract.py;
this module covers what only PostgreSQL has: the Go library's schema, round
trips, JSONB and B-tree limits, session time zones, transaction and isolation
modes, psycopg pools and concurrent writers. Each test works in its own schema.
"""

from __future__ import annotations

import asyncio
import random
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from conftest import PG_DSN, Backend, close_backend, postgres_backend, require, unavailable
from helpers import event, events
from pupsourcing import (
    Event,
    ExpectedVersion,
    InvalidEventError,
    OptimisticConcurrencyError,
)

psycopg = require("psycopg")

from psycopg import IsolationLevel  # noqa: E402 - after the require
from psycopg.pq import TransactionStatus  # noqa: E402

from pupsourcing.adapters.postgres import (  # noqa: E402
    MAX_APPEND_BYTES,
    VALUES_LIMIT,
    PostgresStore,
)
from pupsourcing.store.config import StoreConfig  # noqa: E402

pytestmark = pytest.mark.postgres


@dataclass
class PG:
    """One schema on the test server and the store working in it."""

    schema: str
    dsn: str
    store: PostgresStore
    admin: Any
    opened: list[Any] = field(default_factory=list)

    def connect(self, **kwargs: Any) -> Any:
        conn = psycopg.connect(self.dsn, **kwargs)
        self.opened.append(conn)
        return conn

    def scalar(self, sql: str, params: Any = ()) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
            return None if row is None else row[0]

    def count(self) -> int:
        return int(self.scalar("SELECT count(*) FROM events"))


@pytest.fixture
def make_pg() -> Iterator[Callable[..., PG]]:
    """Make an empty schema (with the store's tables unless ``create=False``)."""
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    made: list[tuple[PG, Backend | None]] = []

    def make(create: bool = True) -> PG:
        backend = None
        if create:
            # The store's tables in a schema of conftest's: a fresh one, or
            # one a test of this worker emptied (``db_reuse``); given back
            # (or dropped) afterwards, as for any backend.
            backend = postgres_backend(StoreConfig())
            schema = backend.schema
        else:
            schema = f"pgt_{uuid.uuid4().hex[:12]}"
            admin.execute(f"CREATE SCHEMA {schema}")
        pg = PG(schema, f"{PG_DSN} options='-c search_path={schema}'", PostgresStore(), admin)
        made.append((pg, backend))
        return pg

    yield make
    for pg, backend in made:
        for conn in pg.opened:
            conn.close()
        if backend is None:
            admin.execute(f"DROP SCHEMA {pg.schema} CASCADE")
        else:
            close_backend(backend)
    admin.close()


@pytest.fixture
def pg(make_pg: Callable[..., PG]) -> PG:
    return make_pg()


def server_error(conn: Any, sql: str, params: Any = ()) -> str | None:
    """Run ``sql`` in a savepoint that is always rolled back; the SQLSTATE it
    failed with, or ``None`` when the server accepted it."""
    try:
        with conn.transaction():
            conn.execute(sql, params)
            raise psycopg.Rollback()
    except psycopg.Error as exc:
        return exc.sqlstate or type(exc).__name__
    return None


RAW_INSERT = (
    "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
    "event_id, event_type, payload, correlation_id, metadata) "
    "VALUES (%s, %s, %s, 1, %s, %s, %s, %s, %s::text::jsonb)"
)


def raw_insert_error(conn: Any, e: Event) -> str | None:
    """Whether the server itself refuses ``e``'s keys and metadata."""
    metadata = None if e.metadata is None else e.metadata.decode("utf-8")
    return server_error(
        conn,
        RAW_INSERT,
        (
            e.bounded_context,
            e.aggregate_type,
            e.aggregate_id,
            e.event_id,
            e.event_type,
            e.payload,
            e.correlation_id,
            metadata,
        ),
    )


# -- the Go library's schema --------------------------------------------------

GO_DDL = """
CREATE TABLE IF NOT EXISTS events (
    global_position BIGSERIAL PRIMARY KEY,
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    event_id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INT NOT NULL DEFAULT 1,
    payload BYTEA NOT NULL,
    trace_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);
CREATE INDEX IF NOT EXISTS idx_events_aggregate
    ON events (bounded_context, aggregate_type, aggregate_id, aggregate_version);
CREATE INDEX IF NOT EXISTS idx_events_event_type ON events (event_type, global_position);
CREATE INDEX IF NOT EXISTS idx_events_correlation
    ON events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS aggregate_heads (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);
CREATE INDEX IF NOT EXISTS idx_aggregate_heads_updated ON aggregate_heads (updated_at);
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection_name TEXT PRIMARY KEY,
    last_global_position BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_projection_checkpoints_updated
    ON projection_checkpoints (updated_at);
"""
"""The Go library's PostgreSQL migration (es/migrations generatePostgresSQL), tables
and indexes as it writes them."""


def catalog(admin: Any, schema: str) -> dict[str, Any]:
    """Columns, constraints and indexes of a schema, with the schema name taken out."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        found = admin.execute(sql, (schema,)).fetchall()
        return sorted(tuple(str(v).replace(f"{schema}.", "") for v in row) for row in found)

    return {
        "columns": rows(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "ordinal_position FROM information_schema.columns WHERE table_schema = %s"
        ),
        "constraints": rows(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s"
        ),
        "indexes": rows(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
        ),
    }


def test_schema_is_the_go_schema_plus_nullable_columns(make_pg: Callable[..., PG]) -> None:
    ours, go = make_pg(), make_pg(create=False)
    with psycopg.connect(go.dsn, autocommit=True) as conn:
        conn.execute(GO_DDL)
    full, theirs = catalog(ours.admin, ours.schema), catalog(go.admin, go.schema)
    # pupsourcing's own tables, beside the Go library's
    own = {
        "aggregate_snapshots",
        "projection_dead_letters",
        "projection_layouts",
        "projection_leases",
    }
    assert {c[0] for c in full["columns"]} - {c[0] for c in theirs["columns"]} == own
    mine = {kind: [row for row in rows if row[0] not in own] for kind, rows in full.items()}
    assert mine["constraints"] == theirs["constraints"]
    assert mine["indexes"] == theirs["indexes"]
    extra = [c for c in mine["columns"] if c not in theirs["columns"]]
    assert sorted(c[:5] for c in extra) == [
        ("events", "metadata_raw", "text", "YES", "None"),
        ("events", "partition_hash", "bigint", "YES", "None"),
    ]
    assert [c for c in theirs["columns"] if c not in mine["columns"]] == []


def go_append(conn: Any, key: tuple[str, str, str], rows: list[dict[str, Any]]) -> None:
    """Append the way the Go library does: read the head, INSERT the events
    (its columns only, metadata straight into JSONB), upsert the head."""
    go_update_head(conn, key, go_insert_events(conn, key, rows))


def go_insert_events(conn: Any, key: tuple[str, str, str], rows: list[dict[str, Any]]) -> int:
    """The first half of :func:`go_append`: read the head and INSERT the
    events after it; returns the aggregate's new version."""
    head = conn.execute(
        "SELECT aggregate_version FROM aggregate_heads "
        "WHERE bounded_context = %s AND aggregate_type = %s AND aggregate_id = %s",
        key,
    ).fetchone()
    version = head[0] if head else 0
    for row in rows:
        version += 1
        conn.execute(
            "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, event_id, event_type, event_version, payload, trace_id, "
            "correlation_id, causation_id, metadata, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                *key,
                version,
                row["event_id"],
                row["event_type"],
                1,
                row["payload"],
                None,
                None,
                None,
                row["metadata"],
                row["created_at"],
            ),
        )
    return int(version)


def go_update_head(conn: Any, key: tuple[str, str, str], version: int) -> None:
    """The second half of :func:`go_append`: upsert the head, last."""
    conn.execute(
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
        "aggregate_version, updated_at) VALUES (%s, %s, %s, %s, NOW()) "
        "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) "
        "DO UPDATE SET aggregate_version = %s, updated_at = NOW()",
        (*key, version, version),
    )


def test_go_created_store_is_upgraded_and_shared(make_pg: Callable[..., PG]) -> None:
    import json

    pg = make_pg(create=False)
    conn = pg.connect()
    conn.execute(GO_DDL)
    key = ("Billing", "Invoice", "inv-1")
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    go_rows = [
        {
            "event_id": uuid.uuid4(),
            "event_type": "Issued",
            "payload": b"\x00go\xff",
            "metadata": '{"b": 1,  "a": [1, 2.50]}',
            "created_at": when,
        },
        {
            "event_id": uuid.uuid4(),
            "event_type": "Paid",
            "payload": b"{}",
            "metadata": None,
            "created_at": when + timedelta(seconds=1),
        },
    ]
    go_append(conn, key, go_rows)
    conn.commit()

    for _ in range(2):  # upgrading is idempotent
        pg.store.create_schema(conn)
        conn.commit()
    assert (
        pg.scalar(
            "SELECT is_nullable FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'events' AND column_name = 'metadata_raw'",
            (pg.schema,),
        )
        == "YES"
    )

    stream = pg.store.read_aggregate_stream(conn, *key)
    assert [e.aggregate_version for e in stream] == [1, 2]
    first, second = stream.events
    assert first.event_id == go_rows[0]["event_id"]
    assert first.payload == b"\x00go\xff"
    assert first.created_at == when
    # Rows Go wrote have no raw copy: the metadata reads as JSONB's text of the same value.
    assert first.metadata is not None
    assert json.loads(first.metadata) == json.loads(go_rows[0]["metadata"])
    assert second.metadata is None
    assert (first.trace_id, first.correlation_id, first.causation_id) == (None, None, None)

    # Python continues the stream Go started, and Go continues Python's.
    python = event(
        "inv-1",
        "Reminded",
        bounded_context="Billing",
        aggregate_type="Invoice",
        metadata=b'{"z": 1, "a": 2}',
    )
    result = pg.store.append(conn, ExpectedVersion.exact(2), [python])
    conn.commit()
    assert result.to_version == 3
    go_append(conn, key, [{**go_rows[0], "event_id": uuid.uuid4(), "metadata": "{}"}])
    conn.commit()
    assert [e.aggregate_version for e in pg.store.read_aggregate_stream(conn, *key)] == [1, 2, 3, 4]
    # What a Go reader sees of the Python event: the same JSON value in the JSONB column.
    go_view = conn.execute(
        "SELECT metadata, event_id FROM events WHERE aggregate_version = 3"
    ).fetchone()
    assert go_view == ({"z": 1, "a": 2}, python.event_id)
    assert pg.store.read_events(conn, 0, 10)[2].metadata == b'{"z": 1, "a": 2}'


# -- round trips --------------------------------------------------------------


@contextmanager
def libpq_trace(conn: Any) -> Iterator[list[tuple[str, str]]]:
    """Record the protocol messages libpq exchanges on ``conn`` as
    ``(direction, message)``: ``F`` from the client, ``B`` from the server;
    the message is its type and fields (``Query "COMMIT"``)."""
    messages: list[tuple[str, str]] = []
    with tempfile.TemporaryFile("w+") as sink:
        conn.pgconn.trace(sink.fileno())
        conn.pgconn.set_trace_flags(
            psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
        )
        try:
            yield messages
        finally:
            conn.pgconn.untrace()
            sink.seek(0)
            for line in sink.read().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    messages.append((parts[0], " ".join(" ".join(parts[2:]).split())))


@contextmanager
def protocol_trace(conn: Any) -> Iterator[list[tuple[str, str]]]:
    """:func:`libpq_trace` as ``(direction, message type)``."""
    kinds: list[tuple[str, str]] = []
    with libpq_trace(conn) as messages:
        yield kinds
    kinds.extend((direction, message.split(" ")[0]) for direction, message in messages)


def round_trips(messages: list[tuple[str, str]]) -> int:
    """Exchanges that waited for the server: each ends with ReadyForQuery."""
    return messages.count(("B", "ReadyForQuery"))


@pytest.mark.parametrize("prepare_threshold", [None, 0, 5])
def test_append_is_one_round_trip_whatever_the_batch_size(
    pg: PG, prepare_threshold: int | None
) -> None:
    conn = pg.connect(prepare_threshold=prepare_threshold)
    conn.execute("SELECT 1")  # the transaction is open: BEGIN is not the store's
    sizes = [1, 2, VALUES_LIMIT, VALUES_LIMIT + 1, 100, 3000]
    counts: dict[int, list[int]] = {}
    for run in range(7):  # psycopg prepares a statement on its 5th use by default
        for size in sizes:
            kind = ExpectedVersion.no_stream() if run % 2 else ExpectedVersion.any()
            with protocol_trace(conn) as messages:
                pg.store.append(conn, kind, events(size, f"a-{size}-{run}"))
            assert messages.count(("F", "Execute")) == 1, messages  # one statement
            counts.setdefault(size, []).append(round_trips(messages))
    conn.commit()
    for size, trips in counts.items():
        # A statement psycopg decides to prepare costs one extra exchange, once.
        assert all(t == 1 for t in trips[2:] if prepare_threshold != 5), (size, trips)
        assert trips[-1] == 1, (size, trips)
        assert sum(trips) <= len(trips) + 2, (size, trips)
    assert pg.count() == 7 * sum(sizes)


def test_a_conflict_costs_one_more_round_trip_to_learn_the_actual_version(pg: PG) -> None:
    conn = pg.connect(prepare_threshold=None)
    pg.store.append(conn, ExpectedVersion.any(), events(3, "a"))
    with protocol_trace(conn) as messages, pytest.raises(OptimisticConcurrencyError) as caught:
        pg.store.append(conn, ExpectedVersion.exact(1), events(50, "a"))
    assert caught.value.actual == 3
    assert round_trips(messages) == 2


@pytest.mark.parametrize("size", [VALUES_LIMIT, VALUES_LIMIT + 1, 1000, 20000])
def test_positions_follow_event_order(pg: PG, size: int) -> None:
    conn = pg.connect()
    pg.store.append(conn, ExpectedVersion.any(), events(3, "a"))
    given = events(size, "a")
    result = pg.store.append(conn, ExpectedVersion.exact(3), given)
    conn.commit()
    assert [e.event_id for e in result.events] == [e.event_id for e in given]
    assert [e.aggregate_version for e in result.events] == list(range(4, size + 4))
    positions = list(result.global_positions)
    assert positions == sorted(positions)
    assert len(set(positions)) == size
    assert [e.global_position for e in result.events] == positions
    stored = conn.execute(
        "SELECT event_id, global_position FROM events WHERE aggregate_version > 3 "
        "ORDER BY aggregate_version"
    ).fetchall()
    assert stored == [(e.event_id, p) for e, p in zip(given, positions, strict=True)]


def test_positions_follow_event_order_with_concurrent_batches(pg: PG) -> None:
    barrier = threading.Barrier(4)
    results: dict[str, Any] = {}

    def writer(name: str) -> None:
        conn = psycopg.connect(pg.dsn)
        try:
            batch = events(3000, name)
            barrier.wait()
            results[name] = (batch, pg.store.append(conn, ExpectedVersion.no_stream(), batch))
            conn.commit()
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for name, (batch, result) in results.items():
        positions = list(result.global_positions)
        assert positions == sorted(positions)
        stored = pg.store.read_aggregate_stream(pg.connect(), "Shop", "Order", name)
        assert [e.event_id for e in stored] == [e.event_id for e in batch]
        assert [e.global_position for e in stored] == positions


# -- what PostgreSQL cannot store is refused before anything is sent -------------

_ALNUM = string.ascii_letters + string.digits
_CJK = "".join(map(chr, range(0x4E00, 0x9FFF)))  # 3 bytes each in UTF-8


def noise(length: int, seed: int = 0, alphabet: str = _ALNUM) -> str:
    """Text that does not compress, as keys made of random ids are."""
    rng = random.Random(seed * 100_003 + length)
    return "".join(rng.choice(alphabet) for _ in range(length))


REFUSED_METADATA = [
    (b'{"a": "x\\u0000y"}', "\\u0000", "22P05"),
    (b'{"\\u0000": 1}', "\\u0000", "22P05"),
    (b'[["\\u0000"]]', "\\u0000", "22P05"),
    (b'{"a": "\\ud800"}', "surrogate", "22P02"),
    (b'{"a": "\\udc00"}', "surrogate", "22P02"),
    (b'"\\ud83d\\u0041"', "surrogate", "22P02"),
    (b'["\\udfff\\ud800"]', "surrogate", "22P02"),
    (b'{"\\uDBFF": 1}', "surrogate", "22P02"),
    (b"1e131072", "before the decimal point", "22003"),
    (b"1" + b"0" * 131072, "before the decimal point", "22003"),
    (b"[1, 99.5e131071]", "before the decimal point", "22003"),
    (b"1e-16384", "after the decimal point", "22003"),
    (b"0.0e-16383", "after the decimal point", "22003"),
    (b"0." + b"0" * 16384, "after the decimal point", "22003"),
    (b'{"n": 1.50e-16382}', "after the decimal point", "22003"),
    (b"0e1073741823", "exponent", "22003"),
    (b"1e-99999999999999999999", "exponent", "22003"),
]


@pytest.mark.parametrize(("metadata", "problem", "sqlstate"), REFUSED_METADATA)
def test_metadata_jsonb_refuses(pg: PG, metadata: bytes, problem: str, sqlstate: str) -> None:
    conn = pg.connect()
    bad = event("a", metadata=metadata)
    assert raw_insert_error(conn, bad) == sqlstate  # the server would refuse it
    with protocol_trace(conn) as messages, pytest.raises(InvalidEventError) as caught:
        pg.store.append(conn, ExpectedVersion.any(), [event("a"), bad])
    assert (caught.value.index, caught.value.field) == (1, "metadata")
    assert problem in str(caught.value)
    assert messages == []  # nothing was sent
    conn.commit()
    assert pg.count() == 0


ACCEPTED_METADATA = [
    b'{"a": "\\\\u0000"}',  # an escaped backslash, then the text u0000
    b'"\\ud83d\\ude00"',  # a surrogate pair: one character
    b'"\\uDBFF\\uDFFF"',
    b'{"a": "\\u00e9\\u0001"}',
    b"1e131071",
    b"9.999e131071",
    b"0.1e131072",
    b"1" + b"0" * 131071,
    b"1" * 5000,  # more digits than Python's int() takes
    b"1e-16383",
    b"1.0e-16382",
    b"0e1073741822",
    b"0." + b"0" * 16383,
    b"-0",
    b"1E400",
    b"[" * 500 + b"]" * 500,
    b'{"a": 1, "a": 2}',
    b"null",
    b'  {"spaced" :  [1 , 2] }\n',
]


@pytest.mark.parametrize("metadata", ACCEPTED_METADATA, ids=lambda m: m[:24].decode())
def test_metadata_jsonb_stores_exactly(pg: PG, metadata: bytes) -> None:
    conn = pg.connect()
    good = event("a", metadata=metadata)
    assert raw_insert_error(conn, good) is None
    pg.store.append(conn, ExpectedVersion.any(), [good])
    conn.commit()
    assert pg.store.read_events(conn, 0, 1)[0].metadata == metadata
    assert pg.scalar("SELECT metadata = %s::jsonb FROM events", (metadata.decode(),)) is True


def test_metadata_nested_beyond_pythons_parser_is_refused(pg: PG) -> None:
    conn = pg.connect()
    deep = event("a", metadata=b"[" * 100_000 + b"]" * 100_000)
    assert raw_insert_error(conn, deep) == "54001"  # stack depth limit exceeded
    with pytest.raises(InvalidEventError, match="nested too deeply") as caught:
        pg.store.append(conn, ExpectedVersion.any(), [deep])
    assert caught.value.field == "metadata"


def key_event(bounded_context: str, aggregate_type: str, aggregate_id: str, **kw: Any) -> Event:
    return Event(bounded_context, aggregate_type, aggregate_id, "E", b"", **kw)


def store_refusal(pg: PG, conn: Any, candidate: Event) -> InvalidEventError | None:
    try:
        pg.store.append(conn, ExpectedVersion.any(), [candidate])
    except InvalidEventError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("context_length", "type_length", "alphabet"),
    [(1, 1, _ALNUM), (100, 100, _ALNUM), (127, 1, _ALNUM), (3, 200, _CJK), (1, 126, _ALNUM)],
)
def test_aggregate_key_size_limit_matches_the_btree_limit(
    pg: PG, context_length: int, type_length: int, alphabet: str
) -> None:
    """Sweep the aggregate id's length across the B-tree entry limit: the store
    refuses exactly what the server refuses."""
    conn = pg.connect()
    bc, at = noise(context_length, 1, alphabet), noise(type_length, 2, alphabet)
    ids = noise(3000, 3, alphabet)
    outcomes = []
    for length in range(3000):
        key_bytes = len((bc + at + ids[:length]).encode())
        if not 2640 <= key_bytes <= 2720:
            continue
        candidate = key_event(bc, at, ids[:length])
        server = raw_insert_error(conn, candidate)
        assert server in (None, "54000")
        refusal = store_refusal(pg, conn, candidate)
        if refusal is not None:
            assert refusal.field == "aggregate_id"
            assert "index entry" in str(refusal)
        outcomes.append((key_bytes, server is not None, refusal is not None))
    conn.rollback()
    assert [o for o in outcomes if o[1] != o[2]] == []
    assert any(o[1] for o in outcomes)
    assert not all(o[1] for o in outcomes)


@pytest.mark.parametrize("name", ["event_type", "correlation_id"])
def test_indexed_field_size_limit_matches_the_btree_limit(pg: PG, name: str) -> None:
    conn = pg.connect()
    outcomes = []
    for length in range(2660, 2720):
        fields: dict[str, Any] = {"correlation_id": "c"}
        fields[name] = noise(length, 4)
        aggregate = f"a{length}"
        candidate = Event("Shop", "Order", aggregate, fields.pop("event_type", "E"), b"", **fields)
        server = raw_insert_error(conn, candidate)
        refusal = store_refusal(pg, conn, candidate)
        if refusal is not None:
            assert refusal.field == name
        outcomes.append((length, server is not None, refusal is not None))
    conn.rollback()
    assert [o for o in outcomes if o[1] != o[2]] == []
    assert any(o[1] for o in outcomes)
    assert not all(o[1] for o in outcomes)


def test_long_repetitive_keys_are_refused_although_they_would_compress(pg: PG) -> None:
    """The one place the check is stricter than the server: an index entry
    that would only fit compressed. Sizes are counted uncompressed so the
    limit does not depend on what the key contains."""
    conn = pg.connect()
    repetitive = key_event("Shop", "Order", "a" * 3000)
    assert raw_insert_error(conn, repetitive) is None
    with pytest.raises(InvalidEventError, match="index entry"):
        pg.store.append(conn, ExpectedVersion.any(), [repetitive])


def test_text_with_nul_is_refused_and_would_be_by_the_server(pg: PG) -> None:
    conn = pg.connect()
    bad = event("a", causation_id="x\x00y")
    with pytest.raises(psycopg.DataError):  # psycopg cannot even send it
        conn.execute("SELECT %s::text", ("x\x00y",))
    conn.rollback()
    with pytest.raises(InvalidEventError) as caught:
        pg.store.append(conn, ExpectedVersion.any(), [bad])
    assert caught.value.field == "causation_id"


def test_an_append_too_large_for_one_message_is_refused(pg: PG) -> None:
    conn = pg.connect()
    half = MAX_APPEND_BYTES // 2 + 1
    batch = [event("a", data=None), *events(2, "a")]
    batch[1] = Event("Shop", "Order", "a", "Big", bytes(half))
    batch[2] = Event("Shop", "Order", "a", "Big", bytes(half))
    with protocol_trace(conn) as messages, pytest.raises(InvalidEventError) as caught:
        pg.store.append(conn, ExpectedVersion.any(), batch)
    assert (caught.value.index, caught.value.field) == (2, "payload")
    assert messages == []
    # The server would not even read such a message: it closes the connection.
    doomed = pg.connect()
    with pytest.raises(psycopg.OperationalError):
        doomed.execute("SELECT length(%s)", (bytes(MAX_APPEND_BYTES + 1),))
    assert doomed.closed


# -- every field round-trips exactly ------------------------------------------

ZONES = ["UTC", "America/New_York", "Asia/Kathmandu", "Pacific/Kiritimati", "<+0330>-03:30"]


@pytest.mark.parametrize("session_zone", ZONES)
def test_timestamps_round_trip_whatever_the_session_time_zone(pg: PG, session_zone: str) -> None:
    times = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3, seconds=-17))),
        datetime(2024, 3, 31, 1, 30, tzinfo=timezone(timedelta(microseconds=-1))),
    ]
    writer = pg.connect(options=f"-c search_path={pg.schema} -c TimeZone={session_zone}")
    given = [event("a", created_at=t) for t in times]
    pg.store.append(writer, ExpectedVersion.any(), given)
    writer.commit()
    for zone in (session_zone, "Asia/Tokyo", "America/Anchorage"):
        reader = pg.connect(options=f"-c search_path={pg.schema} -c TimeZone={zone}")
        for read in (
            pg.store.read_events(reader, 0, 10),
            list(pg.store.read_aggregate_stream(reader, "Shop", "Order", "a")),
        ):
            assert [e.created_at for e in read] == times
            assert all(e.created_at.utcoffset() == timedelta(0) for e in read)
            assert [e.created_at.microsecond for e in read] == [
                t.astimezone(UTC).microsecond for t in times
            ]
    # The server holds the same instants, not shifted by the session's zone.
    stored = pg.scalar(
        "SELECT array_agg(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') "
        "ORDER BY aggregate_version) FROM events"
    )
    assert stored == [t.astimezone(UTC).isoformat(" ", "microseconds")[:26] for t in times]


def test_null_and_empty_ids_stay_distinct(pg: PG) -> None:
    conn = pg.connect()
    given = [
        event("a", trace_id=None, correlation_id="", causation_id="c"),
        event("a", trace_id="", correlation_id=None, causation_id=None),
    ]
    pg.store.append(conn, ExpectedVersion.any(), given)
    conn.commit()
    read = pg.store.read_events(conn, 0, 10)
    for original, stored in zip(given, read, strict=True):
        for name in ("trace_id", "correlation_id", "causation_id"):
            assert getattr(stored, name) == getattr(original, name), name
    nulls = conn.execute(
        "SELECT trace_id IS NULL, correlation_id IS NULL, causation_id IS NULL FROM events "
        "ORDER BY aggregate_version"
    ).fetchall()
    assert nulls == [(True, False, False), (False, True, True)]


METADATA = [
    b"{}",
    b'{"a": 1}',  # what JSONB writes itself
    b'{"b":1,"a":2}',  # JSONB sorts keys and adds spaces
    b'{ "a" : 1 }',
    b'{"a": 1.50, "b": 1E2}',
    b'{"\xc3\xa9": "\\u00e9", "emoji": "\xf0\x9f\x98\x80"}',
    b"[]",
    b'"text"',
    b"null",  # JSON null, not SQL NULL
    None,
    b" {}\n",
]


def test_metadata_bytes_round_trip_and_raw_copy_only_when_needed(pg: PG) -> None:
    conn = pg.connect()
    given = [event("a", metadata=m) for m in METADATA]
    pg.store.append(conn, ExpectedVersion.any(), given)
    conn.commit()
    assert [e.metadata for e in pg.store.read_events(conn, 0, 100)] == METADATA
    rows = conn.execute(
        "SELECT metadata::text, metadata_raw, metadata IS NULL FROM events "
        "ORDER BY aggregate_version"
    ).fetchall()
    for original, (canonical, raw, is_null) in zip(METADATA, rows, strict=True):
        assert is_null == (original is None)
        if original is not None and canonical == original.decode():
            assert raw is None
        else:
            assert raw == (None if original is None else original.decode())


# -- conflicts and the caller's transaction ------------------------------------


def test_unique_violation_is_a_conflict_and_the_transaction_rolls_back_cleanly(pg: PG) -> None:
    conn = pg.connect()
    stored = pg.store.append(conn, ExpectedVersion.any(), events(1, "a"))
    conn.commit()
    conn.execute("CREATE TABLE notes (note TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    duplicate = event("b", event_id=stored.events[0].event_id)
    with pytest.raises(OptimisticConcurrencyError, match="event id") as caught:
        pg.store.append(conn, ExpectedVersion.any(), [duplicate])
    assert caught.value.__cause__ is not None
    assert conn.info.transaction_status == TransactionStatus.INERROR
    conn.rollback()
    assert pg.store.append(conn, ExpectedVersion.any(), events(1, "b")).to_version == 1
    conn.commit()
    assert pg.count() == 2
    assert (
        pg.scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'notes'",
            (pg.schema,),
        )
        == 0
    )


@pytest.mark.parametrize("conflict", ["expected version", "unique violation"])
def test_conflict_inside_nested_transaction_blocks(pg: PG, conflict: str) -> None:
    conn = pg.connect()
    existing = pg.store.append(conn, ExpectedVersion.any(), events(2, "a"))
    conn.commit()
    clash = (
        (ExpectedVersion.exact(1), events(1, "a"))
        if conflict == "expected version"
        else (ExpectedVersion.any(), [event("c", event_id=existing.events[0].event_id)])
    )

    def append_then_clash(expected: ExpectedVersion, aggregate: str) -> None:
        with conn.transaction():
            pg.store.append(conn, expected, events(1, aggregate))
            pg.store.append(conn, *clash)

    with conn.transaction():
        pg.store.append(conn, ExpectedVersion.no_stream(), events(1, "b"))
        with pytest.raises(OptimisticConcurrencyError):
            append_then_clash(ExpectedVersion.exact(2), "a")  # in a savepoint
        # The savepoint rolled back the whole inner block; the outer one goes on.
        assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 2
        pg.store.append(conn, ExpectedVersion.exact(1), events(1, "b"))
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert pg.count() == 4
    assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "b").version == 2
    assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "c").is_empty
    conn.rollback()

    # A conflict that escapes a transaction block rolls the whole block back.
    with pytest.raises(OptimisticConcurrencyError):
        append_then_clash(ExpectedVersion.any(), "d")
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "d").is_empty


def test_autocommit_appends_are_atomic(pg: PG) -> None:
    conn = pg.connect(autocommit=True)
    first = pg.store.append(conn, ExpectedVersion.no_stream(), events(3, "a"))
    assert pg.count() == 3  # committed by the statement itself
    with pytest.raises(OptimisticConcurrencyError) as caught:
        pg.store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
    assert caught.value.actual == 3
    batch = [*events(VALUES_LIMIT + 5, "a"), event("a", event_id=first.events[0].event_id)]
    with pytest.raises(OptimisticConcurrencyError):
        pg.store.append(conn, ExpectedVersion.exact(3), batch)  # unique violation at the end
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert pg.count() == 3
    assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 3
    assert pg.store.append(conn, ExpectedVersion.exact(3), events(1, "a")).to_version == 4


def test_pooled_connections(pg: PG) -> None:
    pool_module = require("psycopg_pool")
    with pool_module.ConnectionPool(pg.dsn, min_size=2, max_size=4, open=True) as pool:
        with pool.connection() as conn:  # commits when the block ends
            pg.store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
            pg.store.update_checkpoint(conn, "p", 2)

        def clash() -> None:
            with pool.connection() as conn:  # rolls back when the block raises
                pg.store.append(conn, ExpectedVersion.any(), events(1, "b"))
                pg.store.append(conn, ExpectedVersion.no_stream(), events(1, "a"))

        with pytest.raises(OptimisticConcurrencyError):
            clash()
        for _ in range(4):  # every connection handed back is clean and usable
            with pool.connection() as conn:
                assert conn.info.transaction_status == TransactionStatus.IDLE
                assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 2
                assert pg.store.read_aggregate_stream(conn, "Shop", "Order", "b").is_empty
                assert pg.store.get_checkpoint(conn, "p") == 2
    assert pg.count() == 2


def test_connection_factories_and_row_factories_do_not_matter(pg: PG) -> None:
    from psycopg.rows import dict_row

    conn = pg.connect(row_factory=dict_row, cursor_factory=psycopg.ClientCursor)
    result = pg.store.append(conn, ExpectedVersion.any(), events(VALUES_LIMIT + 2, "a"))
    conn.commit()
    assert result.to_version == VALUES_LIMIT + 2
    assert len(pg.store.read_events(conn, 0, 100)) == VALUES_LIMIT + 2
    assert len(pg.store.read_latest_events(conn, 3)) == 3
    stream = pg.store.read_aggregate_stream(conn, "Shop", "Order", "a", 2, 3)
    assert [e.aggregate_version for e in stream] == [2, 3]
    assert pg.store.get_checkpoint(conn, "p") == 0
    with pytest.raises(OptimisticConcurrencyError) as caught:
        pg.store.append(conn, ExpectedVersion.exact(1), events(1, "a"))
    assert caught.value.actual == VALUES_LIMIT + 2


def test_reads_work_in_read_only_transactions(pg: PG) -> None:
    writer = pg.connect()
    pg.store.append(writer, ExpectedVersion.any(), events(2, "a"))
    pg.store.update_checkpoint(writer, "p", 1)
    writer.commit()
    reader = pg.connect()
    reader.read_only = True
    assert len(pg.store.read_events(reader, 0, 10)) == 2
    assert pg.store.read_aggregate_stream(reader, "Shop", "Order", "a").version == 2
    assert pg.store.get_checkpoint(reader, "p") == 1
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        pg.store.append(reader, ExpectedVersion.any(), events(1, "a"))


@pytest.mark.parametrize(
    "level", [IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE], ids=lambda x: x.name
)
@pytest.mark.parametrize("kind", ["exact", "no_stream", "any"])
def test_snapshot_isolation_conflicts_become_concurrency_errors(
    pg: PG, level: IsolationLevel, kind: str
) -> None:
    winner, loser = pg.connect(), pg.connect()
    winner.isolation_level = loser.isolation_level = level
    expected = {
        "exact": ExpectedVersion.exact(1),
        "no_stream": ExpectedVersion.no_stream(),
        "any": ExpectedVersion.any(),
    }[kind]
    if kind != "no_stream":
        pg.store.append(winner, ExpectedVersion.no_stream(), events(1, "a"))
        winner.commit()
    # The loser's snapshot is taken before the winner commits.
    assert pg.store.read_aggregate_stream(loser, "Shop", "Order", "a").version == (
        0 if kind == "no_stream" else 1
    )
    pg.store.append(winner, expected, events(1, "a"))
    winner.commit()
    with pytest.raises(OptimisticConcurrencyError, match="concurrent"):
        pg.store.append(loser, expected, events(1, "a"))
    assert loser.info.transaction_status == TransactionStatus.INERROR
    loser.rollback()
    versions = [
        e.aggregate_version for e in pg.store.read_aggregate_stream(loser, "Shop", "Order", "a")
    ]
    assert versions == list(range(1, len(versions) + 1))
    assert len(versions) == (1 if kind == "no_stream" else 2)


# -- concurrent writers --------------------------------------------------------


def race(pg: PG, threads: int, work: Callable[[Any, int], Any]) -> list[Any]:
    """Run ``work(conn, i)`` on ``threads`` threads, each with its own
    connection, released together; each result or exception, in thread order."""
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def run(i: int) -> None:
        conn = psycopg.connect(pg.dsn)
        try:
            barrier.wait()
            try:
                outcomes[i] = work(conn, i)
                conn.commit()
            except Exception as exc:
                conn.rollback()
                outcomes[i] = exc
        finally:
            conn.close()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return outcomes


def test_eight_writers_on_one_aggregate(pg: PG) -> None:
    store = pg.store
    for round_ in range(3):
        aggregate = f"hot-{round_}"
        # Everybody creates the stream: exactly one wins.
        outcomes = race(
            pg,
            8,
            lambda c, i, a=aggregate: store.append(c, ExpectedVersion.no_stream(), events(2, a)),
        )
        winners = [o for o in outcomes if not isinstance(o, Exception)]
        losers = [o for o in outcomes if isinstance(o, Exception)]
        assert len(winners) == 1
        assert all(isinstance(o, OptimisticConcurrencyError) for o in losers)
        assert {o.actual for o in losers} == {2}
        # Everybody appends at the version they read: exactly one wins.
        outcomes = race(
            pg, 8, lambda c, i, a=aggregate: store.append(c, ExpectedVersion.exact(2), events(1, a))
        )
        assert sum(not isinstance(o, Exception) for o in outcomes) == 1
        assert all(
            isinstance(o, OptimisticConcurrencyError) for o in outcomes if isinstance(o, Exception)
        )
        # Appends that expect nothing all go through, each at its own versions.
        outcomes = race(
            pg, 8, lambda c, i, a=aggregate: store.append(c, ExpectedVersion.any(), events(3, a))
        )
        assert not [o for o in outcomes if isinstance(o, Exception)]
        ranges = sorted((o.from_version, o.to_version) for o in outcomes)
        assert ranges == [(3 + 3 * i, 6 + 3 * i) for i in range(8)]
    rows = pg.scalar(
        "SELECT count(*) = count(DISTINCT (aggregate_id, aggregate_version)) FROM events"
    )
    assert rows is True
    assert pg.count() == 3 * (2 + 1 + 24)


def test_eight_writers_on_their_own_aggregates(pg: PG) -> None:
    outcomes = race(
        pg,
        8,
        lambda c, i: [
            pg.store.append(c, ExpectedVersion.exact(n), events(1, f"own-{i}")) for n in range(25)
        ],
    )
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert pg.count() == 200
    for i in range(8):
        stream = pg.store.read_aggregate_stream(pg.connect(), "Shop", "Order", f"own-{i}")
        assert [e.aggregate_version for e in stream] == list(range(1, 26))


def test_an_open_append_blocks_only_its_own_aggregate(pg: PG) -> None:
    holder = pg.connect()
    pg.store.append(holder, ExpectedVersion.no_stream(), events(1, "held"))  # not committed

    def other_aggregate(conn: Any, i: int) -> float:
        conn.execute("SET lock_timeout = '5s'")
        started = time.monotonic()
        pg.store.append(conn, ExpectedVersion.no_stream(), events(1, f"free-{i}"))
        return time.monotonic() - started

    outcomes = race(pg, 7, other_aggregate)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert max(outcomes) < 5
    assert pg.count() == 7  # committed while the holder's append is still open

    blocked = pg.connect()
    blocked.execute("SET lock_timeout = '200ms'")
    with pytest.raises(psycopg.errors.LockNotAvailable):
        pg.store.append(blocked, ExpectedVersion.any(), events(1, "held"))
    blocked.rollback()

    # A writer that waits for the holder learns the outcome once it commits.
    waiting: list[Any] = []
    waiter_conn = pg.connect()

    def waiter() -> None:
        try:
            pg.store.append(waiter_conn, ExpectedVersion.no_stream(), events(1, "held"))
        except OptimisticConcurrencyError as exc:
            waiting.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    assert not waiting
    holder.commit()
    thread.join(10)
    assert len(waiting) == 1
    assert waiting[0].actual == 1
    waiter_conn.rollback()
    assert pg.count() == 8


def wait_for_lock_wait(pg: PG, pid: int) -> None:
    """Return once the backend ``pid`` waits for a lock (fail after 10 s)."""
    deadline = time.monotonic() + 10
    while pg.scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)) != (
        "Lock"
    ):
        assert time.monotonic() < deadline, "the append never waited for the Go writer"
        time.sleep(0.01)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_deadlock_with_a_go_writer_is_a_conflict(pg: PG, api: str) -> None:
    """The Go library inserts the events, then updates aggregate_heads; we
    lock the head first. Crossed, the two deadlock, and the server aborts one
    of them: ours here (Go's session waits 10 s before it looks for deadlocks,
    ours the default 1 s). Our side must see an OptimisticConcurrencyError."""
    key = ("Shop", "Order", "a")
    setup = pg.connect()
    pg.store.append(setup, ExpectedVersion.no_stream(), events(1, "a"))
    setup.commit()

    go = pg.connect()
    go.execute("SET deadlock_timeout = '10s'")
    row = {
        "event_id": uuid.uuid4(),
        "event_type": "FromGo",
        "payload": b"{}",
        "metadata": "{}",
        "created_at": datetime.now(UTC),
    }
    version = go_insert_events(go, key, [row])  # holds version 2's unique key, uncommitted

    ours = pg.connect()
    ours.execute("SET deadlock_timeout = '1s'")
    ours.commit()
    outcome: list[BaseException | None] = []
    pid: list[int] = [] if api == "async" else [ours.info.backend_pid]

    def append() -> None:
        try:
            if api == "sync":
                pg.store.append(ours, ExpectedVersion.exact(1), events(1, "a"))
            else:
                asyncio.run(append_async())
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    async def append_async() -> None:
        from pupsourcing.aio import AsyncPostgresStore

        async with await psycopg.AsyncConnection.connect(pg.dsn) as conn:
            await conn.execute("SET deadlock_timeout = '1s'")
            pid.append(conn.info.backend_pid)
            try:
                await AsyncPostgresStore().append(conn, ExpectedVersion.exact(1), events(1, "a"))
            finally:
                await conn.rollback()

    thread = threading.Thread(target=append)
    thread.start()
    deadline = time.monotonic() + 10
    while not pid:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    wait_for_lock_wait(pg, pid[0])  # head row locked, waiting on Go's version 2
    go_update_head(go, key, version)  # waits on our head row: the deadlock
    go.commit()
    thread.join(10)

    [error] = outcome
    assert isinstance(error, OptimisticConcurrencyError), error
    assert isinstance(error.__cause__, psycopg.errors.DeadlockDetected)
    assert (error.bounded_context, error.aggregate_type, error.aggregate_id) == key
    assert error.expected == ExpectedVersion.exact(1)
    assert "aborted this transaction" in str(error)
    assert "roll it back and retry" in str(error)
    if api == "sync":
        assert ours.info.transaction_status == TransactionStatus.INERROR
        ours.rollback()
    stream = pg.store.read_aggregate_stream(ours, *key)
    assert [(e.aggregate_version, e.event_type) for e in stream] == [(1, "E0"), (2, "FromGo")]
    assert pg.scalar("SELECT aggregate_version FROM aggregate_heads") == 2
    # Retried at the version it now reads, the append goes through.
    assert pg.store.append(ours, ExpectedVersion.exact(2), events(1, "a")).to_version == 3
    ours.commit()


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt landing while a statement runs."""


def test_an_interruption_mid_statement_run_alone_is_what_the_caller_sees(pg: PG) -> None:
    # A statement that runs as a transaction of its own switches autocommit
    # on and back; with a reply still coming the switch back is refused, and
    # that refusal must not hide the interruption from the processor.
    class InterruptedAlone(PostgresStore):
        def _cursor(self, tx: Any, statement: Any) -> Any:
            if tx.autocommit:  # the statement, run alone
                tx.pgconn.send_query(b"SELECT pg_sleep(0.2)")
                raise Interrupted
            return super()._cursor(tx, statement)

    store = InterruptedAlone()
    conn = pg.connect()
    with pytest.raises(Interrupted):
        store._run(conn, store.dialect.horizon_probe())
    conn.close()
