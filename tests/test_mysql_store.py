"""MySQL/MariaDB specifics: round trips, positions, transactions, time zones,
size limits, collations, metadata bytes and concurrency, on the real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    MYSQL_HOST,
    Backend,
    backends_and_apis,
    make_backend,
    mysql_admin,
    require,
)
from helpers import event, events
from pupsourcing import (
    Event,
    ExpectedVersion,
    InvalidEventError,
    OptimisticConcurrencyError,
)
from pupsourcing.adapters.mysql import (
    MAX_CREATED_AT,
    MIN_CREATED_AT,
    CollationWarning,
    MySQLStore,
)
from pupsourcing.adapters.mysql._dialect import MySQLDialect
from pupsourcing.store import StoreConfig
from pupsourcing.store.plan import Row, Statement
from pupsourcing.store.snapshots import Snapshot

pymysql = require("pymysql")

MB = 1024 * 1024


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Backend]:
    b = make_backend("mysql", tmp_path)
    yield b
    for cleanup in reversed(b.cleanups):
        cleanup()


@pytest.fixture(params=[True, False], ids=["returning", "select-back"])
def any_path(request: pytest.FixtureRequest, db: Backend) -> Backend:
    """The store on MariaDB's INSERT ... RETURNING path and on the path MySQL
    8 takes (positions selected back after the insert)."""
    db.store.dialect.prefer_returning = request.param  # type: ignore[attr-defined]
    return db


def execute(conn: Any, sql: str, params: Any = None) -> list[Row]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def stored_rows(db: Backend) -> list[Row]:
    """(global_position, aggregate_id, aggregate_version, event_id) as stored."""
    conn = db.connect()
    try:
        return execute(
            conn,
            "SELECT global_position, aggregate_id, aggregate_version, event_id FROM events "
            "ORDER BY global_position",
        )
    finally:
        conn.close()


def head_version(db: Backend, aggregate_id: str) -> int | None:
    conn = db.connect()
    try:
        rows = execute(
            conn,
            "SELECT aggregate_version FROM aggregate_heads WHERE aggregate_id = %s",
            (aggregate_id,),
        )
        return None if not rows else int(rows[0][0])
    finally:
        conn.close()


class CountingStore(MySQLStore):
    """The real store, counting the statements it sends to the server."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        super().__init__(config)
        self.statements: list[str] = []

    def _cursor(self, tx: Any, statement: Statement) -> Any:
        self.statements.append(statement.sql[:60])
        return super()._cursor(tx, statement)


# -- round trips and positions ---------------------------------------------


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-back"])
def test_append_takes_the_same_round_trips_for_1_or_1000_events(
    db: Backend, returning: bool
) -> None:
    store = CountingStore()
    store.dialect.prefer_returning = returning
    conn = db.connection()
    store.append(conn, ExpectedVersion.any(), events(1, "warm-up"))  # learns the limits once
    counts = {}
    for expected, name in [
        (ExpectedVersion.no_stream(), "new"),
        (ExpectedVersion.exact(0), "zero"),  # the same as no_stream(), its own aggregates
        (ExpectedVersion.any(), "any"),
    ]:
        for size in (1, 10, 1000):
            aggregate = f"{name}-{size}-{expected}"
            store.statements.clear()
            store.append(conn, expected, events(size, aggregate))
            counts[(str(expected), size)] = len(store.statements)
        store.statements.clear()
        store.append(conn, ExpectedVersion.exact(1000), events(1000, aggregate))
        counts[("Exact(1000)", 1000)] = len(store.statements)
    conn.commit()
    expected_count = 3 if returning else 4  # savepoint, claim, insert[, select]
    assert set(counts.values()) == {expected_count}, counts


@pytest.mark.parametrize("increment", [1, 7])
def test_positions_are_the_stored_rows_in_event_order(any_path: Backend, increment: int) -> None:
    db = any_path
    conn = db.connection()
    execute(conn, f"SET SESSION auto_increment_increment = {increment}")
    results = [
        db.store.append(conn, ExpectedVersion.any(), events(5, "a")),
        db.store.append(conn, ExpectedVersion.exact(5), events(3, "a")),
        db.store.append(conn, ExpectedVersion.no_stream(), events(4, "b")),
    ]
    conn.commit()
    by_id = {uuid.UUID(bytes=row[3]): (row[0], row[2]) for row in stored_rows(db)}
    for result in results:
        for stored, position in zip(result.events, result.global_positions, strict=True):
            assert by_id[stored.event_id] == (position, stored.aggregate_version)
        steps = {
            b - a
            for a, b in zip(result.global_positions[:-1], result.global_positions[1:], strict=True)
        }
        assert steps == {increment}


def test_versions_and_conflicts_on_both_paths(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    assert store.append(conn, ExpectedVersion.no_stream(), events(2, "a")).to_version == 2
    assert store.append(conn, ExpectedVersion.any(), events(3, "a")).to_version == 5
    assert store.append(conn, ExpectedVersion.exact(5), events(1, "a")).to_version == 6
    for expected in (ExpectedVersion.no_stream(), ExpectedVersion.exact(5)):
        with pytest.raises(OptimisticConcurrencyError) as caught:
            store.append(conn, expected, events(1, "a"))
        assert caught.value.actual == 6
    conn.commit()
    stream = store.read_aggregate_stream(conn, "Shop", "Order", "a")
    assert [e.aggregate_version for e in stream] == [1, 2, 3, 4, 5, 6]
    assert any_path.count_events() == 6


# -- transactions -------------------------------------------------------------


def test_a_conflict_keeps_the_callers_earlier_writes(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    execute(conn, "CREATE TABLE side_effects (note TEXT)")
    store.append(conn, ExpectedVersion.any(), events(1, "a"))
    conn.commit()
    execute(conn, "INSERT INTO side_effects VALUES ('before')")
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.exact(7), events(2, "a"))
    duplicate = event("b", event_id=store.read_events(conn, 0, 1)[0].event_id)
    with pytest.raises(OptimisticConcurrencyError, match="event id"):
        store.append(conn, ExpectedVersion.any(), [event("b"), duplicate])
    execute(conn, "INSERT INTO side_effects VALUES ('after')")
    conn.commit()
    assert any_path.scalar("SELECT count(*) FROM side_effects") == 2
    assert any_path.count_events() == 1
    assert head_version(any_path, "b") is None  # the claim on b was rolled back too


def test_autocommit_connection_append_is_atomic_and_committed(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    any_path.set_autocommit(conn)
    store.append(conn, ExpectedVersion.any(), events(3, "a"))
    assert any_path.count_events() == 3  # visible to another connection: committed
    assert not conn.server_status & 1  # and no transaction is left open

    existing = store.read_events(conn, 0, 1)[0].event_id
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.any(), [event("b"), event("b", event_id=existing)])
    assert not conn.server_status & 1
    assert any_path.count_events() == 3
    assert head_version(any_path, "b") is None

    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.exact(1), events(1, "a"))
    assert not conn.server_status & 1


def test_autocommit_connection_inside_an_explicit_transaction_is_not_committed(
    db: Backend,
) -> None:
    store, conn = db.store, db.connection()
    db.set_autocommit(conn)
    conn.begin()
    store.append(conn, ExpectedVersion.any(), events(2, "a"))
    assert db.count_events() == 0
    conn.rollback()
    assert db.count_events() == 0
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").is_empty


def test_deadlock_between_two_appenders_is_a_conflict(db: Backend) -> None:
    store = db.store
    first, second = db.connection(), db.connection()
    store.append(first, ExpectedVersion.any(), events(1, "a"))
    store.append(second, ExpectedVersion.any(), events(1, "b"))
    first.commit()
    second.commit()
    store.append(first, ExpectedVersion.any(), events(1, "a"))  # first holds a
    store.append(second, ExpectedVersion.any(), events(1, "b"))  # second holds b
    outcome: dict[str, BaseException | None] = {}

    def cross(name: str, conn: Any, aggregate: str) -> None:
        try:
            store.append(conn, ExpectedVersion.any(), events(1, aggregate))
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    threads = [
        threading.Thread(target=cross, args=("first", first, "b")),
        threading.Thread(target=cross, args=("second", second, "a")),
    ]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(30)
    errors = [e for e in outcome.values() if e is not None]
    assert len(errors) == 1, outcome
    assert isinstance(errors[0], OptimisticConcurrencyError)
    assert "deadlock" in str(errors[0])
    first.commit()
    second.commit()
    # 2 committed before, then the winner's 2; the server rolled back the
    # victim's whole transaction, including its earlier append.
    assert db.count_events() == 4


# -- timestamps ---------------------------------------------------------------


@pytest.fixture(scope="session")
def named_time_zones() -> bool:
    """Whether the server knows named time zones; loads the system's zoneinfo
    into an empty mysql.time_zone* table set (what the server's packaging
    recommends), never touching tables that already have zones. Parallel
    workers (and other runs) load them one at a time, under a named lock."""
    admin = mysql_admin()
    try:
        assert execute(admin, "SELECT GET_LOCK('pupsourcing_test_time_zones', 600)")[0][0] == 1
        if execute(admin, "SELECT count(*) FROM mysql.time_zone_name")[0][0]:
            return True
        tool = shutil.which("mariadb-tzinfo-to-sql") or shutil.which("mysql_tzinfo_to_sql")
        client = shutil.which("mariadb") or shutil.which("mysql")
        if not (tool and client and Path("/usr/share/zoneinfo").is_dir()):
            return False
        sql = subprocess.run(
            [tool, "/usr/share/zoneinfo"], capture_output=True, check=True, timeout=120
        ).stdout
        subprocess.run(
            [client, "-h", MYSQL_HOST, "-uroot", "mysql"], input=sql, check=True, timeout=300
        )
        return bool(execute(admin, "SELECT count(*) FROM mysql.time_zone_name")[0][0])
    finally:
        admin.close()  # releases the lock


BERLIN_FOLD = [  # 02:30 local happens twice on 2023-10-29 in Europe/Berlin
    datetime(2023, 10, 29, 0, 30, 0, 123456, tzinfo=UTC),
    datetime(2023, 10, 29, 1, 30, 0, 654321, tzinfo=UTC),
]
INSTANTS = [
    *BERLIN_FOLD,
    datetime(2023, 3, 26, 1, 0, 0, 1, tzinfo=UTC),  # Berlin spring-forward gap
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    MIN_CREATED_AT,
    MAX_CREATED_AT,
]


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-back"])
def test_created_at_is_exact_whatever_the_session_time_zone(
    db: Backend, named_time_zones: bool, returning: bool
) -> None:
    db.store.dialect.prefer_returning = returning  # type: ignore[attr-defined]
    zones = ["+00:00", "+05:45", "-09:30", "SYSTEM"]
    if named_time_zones:
        zones += ["Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe"]
    writers = []
    for n, zone in enumerate(zones):
        conn = db.connection()
        execute(conn, "SET time_zone = %s", (zone,))
        given_events = [
            event(f"tz-{n}", created_at=instant, event_type=f"T{i}")
            for i, instant in enumerate(INSTANTS)
        ]
        db.store.append(conn, ExpectedVersion.no_stream(), given_events)
        conn.commit()
        writers.append(given_events)
    for zone in zones:
        reader = db.connection()
        execute(reader, "SET time_zone = %s", (zone,))
        for n, written in enumerate(writers):
            stream = db.store.read_aggregate_stream(reader, "Shop", "Order", f"tz-{n}")
            assert [e.created_at for e in stream] == [e.created_at for e in written], zone
            assert all(e.created_at.utcoffset() == timedelta(0) for e in stream)
    if named_time_zones:  # the fold instants stay distinct in the database itself
        assert (
            db.scalar(
                "SELECT count(DISTINCT UNIX_TIMESTAMP(created_at)) FROM events "
                "WHERE aggregate_id = 'tz-0' AND event_type IN ('T0', 'T1')"
            )
            == 2
        )


@pytest.mark.parametrize(
    "instant",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        MIN_CREATED_AT - timedelta(microseconds=1),
        MAX_CREATED_AT + timedelta(microseconds=1),
        datetime(1969, 12, 31, 23, 0, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_created_at_outside_timestamp_range_is_rejected(db: Backend, instant: datetime) -> None:
    conn = db.connection()
    with pytest.raises(InvalidEventError) as caught:
        db.store.append(conn, ExpectedVersion.any(), [event("a"), event("a", created_at=instant)])
    assert (caught.value.index, caught.value.field) == (1, "created_at")
    assert "2038-01-19" in str(caught.value)
    conn.commit()
    assert db.count_events() == 0


# -- payload and packet size --------------------------------------------------


def test_blob_payload_limit_is_enforced_before_anything_is_written(db: Backend) -> None:
    store, conn = db.store, db.connection()
    fits = store.append(conn, ExpectedVersion.any(), [Event("Shop", "Order", "a", "E", b"")])
    conn.commit()
    assert fits.to_version == 1
    for size in (65_536, 5 * MB):
        big = Event("Shop", "Order", "a", "Big", os.urandom(size))
        with pytest.raises(InvalidEventError) as caught:
            store.append(conn, ExpectedVersion.any(), [event("a"), big])
        assert (caught.value.index, caught.value.field) == (1, "payload")
        assert "65535" in str(caught.value)
        assert "LONGBLOB" in str(caught.value)
    edge = Event("Shop", "Order", "a", "Edge", os.urandom(65_535))
    store.append(conn, ExpectedVersion.any(), [edge])
    conn.commit()
    assert db.count_events() == 2
    assert head_version(db, "a") == 2
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").events[-1].payload == (
        edge.payload
    )


def test_widened_payload_column_takes_5_mb_and_the_store_notices(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    store.append(conn, ExpectedVersion.any(), events(1, "a"))  # learns BLOB
    conn.commit()
    execute(conn, "ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    payload = os.urandom(5 * MB)
    result = store.append(
        conn, ExpectedVersion.any(), [Event("Shop", "Order", "a", "Big", payload)]
    )
    conn.commit()
    reader = any_path.connection()
    [stored] = store.read_aggregate_stream(reader, "Shop", "Order", "a", 2)
    assert stored.payload == payload
    assert stored.global_position == result.global_positions[0]


@pytest.mark.parametrize("sql_mode", ["STRICT_TRANS_TABLES", ""], ids=["strict", "non-strict"])
def test_a_narrowed_column_is_caught_even_with_stale_limits(
    any_path: Backend, sql_mode: str
) -> None:
    store, conn = any_path.store, any_path.connection()
    execute(conn, "ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    store.append(conn, ExpectedVersion.any(), events(1, "a"))  # learns LONGBLOB
    conn.commit()
    execute(conn, "ALTER TABLE events MODIFY payload BLOB NOT NULL")
    execute(conn, "SET SESSION sql_mode = %s", (sql_mode,))
    big = Event("Shop", "Order", "a", "Big", os.urandom(70_000))
    with pytest.raises(InvalidEventError) as caught:
        store.append(conn, ExpectedVersion.any(), [event("a"), big])
    assert (caught.value.index, caught.value.field) == (1, "payload")
    conn.commit()
    assert any_path.count_events() == 1
    assert head_version(any_path, "a") == 1


def test_an_event_larger_than_max_allowed_packet_is_rejected_without_losing_the_connection(
    db: Backend,
) -> None:
    store, conn = db.store, db.connection()
    execute(conn, "ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    packet = int(db.scalar("SELECT @@max_allowed_packet"))
    execute(conn, "CREATE TABLE side_effects (note TEXT)")
    execute(conn, "INSERT INTO side_effects VALUES ('kept')")
    huge = Event("Shop", "Order", "a", "Huge", bytes(packet // 2 + 1))
    with pytest.raises(InvalidEventError) as caught:
        store.append(conn, ExpectedVersion.any(), [event("a"), huge])
    assert (caught.value.index, caught.value.field) == (1, "payload")
    assert "max_allowed_packet" in str(caught.value)
    assert execute(conn, "SELECT count(*) FROM side_effects") == [(1,)]  # same transaction
    conn.commit()
    assert db.scalar("SELECT count(*) FROM side_effects") == 1


def test_a_batch_larger_than_max_allowed_packet_is_split(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    execute(conn, "ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    packet = int(any_path.scalar("SELECT @@max_allowed_packet"))
    payloads = [os.urandom(packet // 5) for _ in range(6)]  # ~2.4 packets as hex
    batch = [Event("Shop", "Order", "a", f"E{i}", p) for i, p in enumerate(payloads)]
    result = store.append(conn, ExpectedVersion.no_stream(), batch)
    conn.commit()
    assert result.to_version == 6
    stream = store.read_aggregate_stream(any_path.connection(), "Shop", "Order", "a")
    assert [e.payload for e in stream] == payloads
    assert [e.global_position for e in stream] == list(result.global_positions)


def test_an_any_append_with_escaped_keys_is_split_to_fit_max_allowed_packet(db: Backend) -> None:
    """An ``any()`` append sends the aggregate key twice per row (its version
    is read from the head in the same statement): keys whose every character
    is escaped weigh four times their length there, and the split into
    statements must count them, or the server drops the connection on a
    packet too large (nothing stored, and no error naming an event)."""
    store, conn = db.store, db.connection()
    packet = int(db.scalar("SELECT @@max_allowed_packet"))
    key = "\\" * 255
    count = packet // 1700  # about 3 KB each as SQL: more than a packet
    batch = [Event(key, key, key, "E", b"", metadata=None) for _ in range(count)]
    result = store.append(conn, ExpectedVersion.any(), batch)
    conn.commit()
    assert result.to_version == count
    assert len(store.read_aggregate_stream(conn, key, key, key)) == count


# -- text, keys and collations -----------------------------------------------


def test_distinct_ids_are_distinct_aggregates(db: Backend) -> None:
    store, conn = db.store, db.connection()
    ids = ["a", "A", "e", "é", "ss", "ß", "\U0001f600", "\U0001f601", "\U00010000x", "a\t"]
    for aggregate_id in ids:
        store.append(conn, ExpectedVersion.no_stream(), [event(aggregate_id)])
        store.append(conn, ExpectedVersion.no_stream(), [event(aggregate_id, bounded_context="ß")])
    conn.commit()
    for aggregate_id in ids:
        stream = store.read_aggregate_stream(conn, "Shop", "Order", aggregate_id)
        assert [(e.aggregate_id, e.aggregate_version) for e in stream] == [(aggregate_id, 1)]
    assert db.count_events() == 2 * len(ids)


def test_trailing_spaces_in_keys_are_rejected(db: Backend) -> None:
    store, conn = db.store, db.connection()
    store.append(conn, ExpectedVersion.any(), [event("a")])
    for name in ("bounded_context", "aggregate_type", "aggregate_id"):
        fields = {"bounded_context": "Shop", "aggregate_type": "Order", "aggregate_id": "a"}
        fields[name] += " "
        bad = event(fields.pop("aggregate_id"), **fields)
        with pytest.raises(InvalidEventError) as caught:
            store.append(conn, ExpectedVersion.any(), [bad])
        assert caught.value.field == name
        assert "space" in str(caught.value)
    conn.commit()
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a ").is_empty
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 1
    with pytest.raises(ValueError, match="projection_name"):
        store.update_checkpoint(conn, "p ", 1)
    with pytest.raises(ValueError, match="projection_name"):
        store.get_checkpoint(conn, "p ")
    store.update_checkpoint(conn, "P", 1)
    store.update_checkpoint(conn, "p", 2)
    assert (store.get_checkpoint(conn, "P"), store.get_checkpoint(conn, "p")) == (1, 2)


@pytest.mark.parametrize(
    "name",
    [
        "bounded_context",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "trace_id",
        "correlation_id",
        "causation_id",
    ],
)
def test_text_is_at_most_255_characters_not_bytes(db: Backend, name: str) -> None:
    store, conn = db.store, db.connection()
    longest = "\U0001f600" * 255  # 1,020 bytes
    fields: dict[str, Any] = {"bounded_context": "Shop", "aggregate_type": "Order"}
    fields[name] = longest
    aggregate_id = fields.pop("aggregate_id", "a")
    event_type = fields.pop("event_type", "E")
    result = store.append(conn, ExpectedVersion.any(), [event(aggregate_id, event_type, **fields)])
    conn.commit()
    [stored] = store.read_events(conn, result.global_positions[0] - 1, 1)
    assert getattr(stored, name) == longest
    fields[name] = longest + "x"
    if name == "aggregate_id":
        aggregate_id = fields.pop(name)
    if name == "event_type":
        event_type = fields.pop(name)
    with pytest.raises(InvalidEventError) as caught:
        store.append(conn, ExpectedVersion.any(), [event(aggregate_id, event_type, **fields)])
    assert caught.value.field == name
    assert "256 characters" in str(caught.value)


GO_SCHEMA = [  # the Go library's MySQL migration, as it creates the tables
    """CREATE TABLE events (
    global_position BIGINT AUTO_INCREMENT PRIMARY KEY,
    bounded_context VARCHAR(255) NOT NULL,
    aggregate_type VARCHAR(255) NOT NULL,
    aggregate_id VARCHAR(255) NOT NULL,
    aggregate_version BIGINT NOT NULL,
    event_id BINARY(16) NOT NULL UNIQUE,
    event_type VARCHAR(255) NOT NULL,
    event_version INT NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id VARCHAR(255),
    correlation_id VARCHAR(255),
    causation_id VARCHAR(255),
    metadata JSON,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY unique_aggregate_version
        (bounded_context, aggregate_type, aggregate_id, aggregate_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE aggregate_heads (
    bounded_context VARCHAR(255) NOT NULL,
    aggregate_type VARCHAR(255) NOT NULL,
    aggregate_id VARCHAR(255) NOT NULL,
    aggregate_version BIGINT NOT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
    """CREATE TABLE projection_checkpoints (
    projection_name VARCHAR(255) PRIMARY KEY,
    last_global_position BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
]


def test_go_created_tables_are_upgraded_and_their_collation_is_flagged(db: Backend) -> None:
    conn = db.connection()
    for table in ("events", "aggregate_heads", "projection_checkpoints"):
        execute(conn, f"DROP TABLE {table}")
    for sql in GO_SCHEMA:
        execute(conn, sql)
    execute(
        conn,
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, payload, metadata, created_at) VALUES "
        "('Shop', 'Order', 'go-1', 1, %s, 'Placed', 'x', '{}', '2024-05-01 10:00:00.5')",
        (uuid.uuid4().bytes,),
    )
    conn.commit()
    store = MySQLStore()
    store.create_schema(conn)
    store.create_schema(conn)
    assert "partition_hash" in {row[0] for row in execute(conn, "SHOW COLUMNS FROM events")}
    [old] = store.read_events(conn, 0, 10)
    assert old.created_at == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)
    with pytest.warns(CollationWarning, match="aggregate_id"):
        store.append(conn, ExpectedVersion.any(), [event("order-a")])
    with pytest.raises(OptimisticConcurrencyError):  # the documented limit of that collation
        store.append(conn, ExpectedVersion.no_stream(), [event("ORDER-A")])
    conn.rollback()

    header = store.schema_sql().split("\n\n")[0]
    for line in header.splitlines():
        if line.startswith("--   ALTER TABLE") and "MODIFY" in line:
            execute(conn, line.removeprefix("--   "))
    fixed = MySQLStore()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollationWarning)
        fixed.append(conn, ExpectedVersion.no_stream(), [event("order-a")])
        fixed.append(conn, ExpectedVersion.no_stream(), [event("ORDER-A")])
    conn.commit()
    assert db.count_events() == 3


# -- metadata -------------------------------------------------------------------


def test_metadata_bytes_are_kept_exactly(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    documents = [
        b'{"z": 1,   "a" : [1.50, 1e3, -0, 1E+2],\n\t"\\u00e9": "\\ud83d\\ude00\xc3\xa9"}',
        b' "just a string" ',
        b"[" * 31 + b"]" * 31,
        b'{"dup": 1, "dup": 2}',
        b"12345678901234567890123456789012345678901234567890",
        None,
        b"{}",
    ]
    batch = [event("a", metadata=doc) for doc in documents]
    store.append(conn, ExpectedVersion.any(), batch)
    conn.commit()
    read = store.read_aggregate_stream(any_path.connection(), "Shop", "Order", "a")
    assert [e.metadata for e in read] == documents


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'["\\udc00 and more"]', "surrogate"),
        (b"[" * 32 + b"]" * 32, "31 levels"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "31 levels"),
        # Deeper than a recursive walk goes, shallower than the JSON parser's limit.
        (b"[" * 600 + b"]" * 600, "31 levels"),
        (b'{"a":' * 600 + b'"\\u00e9"' + b"}" * 600, "31 levels"),
    ],
)
def test_metadata_mariadb_would_refuse_is_rejected_up_front(
    db: Backend, metadata: bytes, problem: str
) -> None:
    conn = db.connection()
    with pytest.raises(InvalidEventError) as caught:
        db.store.append(conn, ExpectedVersion.any(), [event("a"), event("a", metadata=metadata)])
    assert (caught.value.index, caught.value.field) == (1, "metadata")
    assert problem in str(caught.value)
    conn.commit()
    assert db.count_events() == 0


class UncheckedMetadata(MySQLDialect):
    """A dialect that lets metadata through to the server unchecked."""

    def check_event(self, index: int, event: Event) -> None:
        pass


class UncheckedStore(MySQLStore):
    dialect_class = UncheckedMetadata


def test_metadata_the_server_refuses_is_an_invalid_event_naming_it(db: Backend) -> None:
    store, conn = UncheckedStore(), db.connection()
    execute(conn, "CREATE TABLE side_effects (note TEXT)")
    execute(conn, "INSERT INTO side_effects VALUES ('kept')")
    batch = [event("a"), event("a"), event("a", metadata=b'{"a": "\\udc00"}')]
    with pytest.raises(InvalidEventError) as caught:
        store.append(conn, ExpectedVersion.any(), batch)
    assert (caught.value.index, caught.value.field) == (2, "metadata")
    conn.commit()
    assert db.count_events() == 0
    assert head_version(db, "a") is None
    assert db.scalar("SELECT count(*) FROM side_effects") == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_any_json_either_round_trips_exactly_or_is_rejected_as_the_server_would(
    db: Backend, value: object, ascii_only: bool, indent: int | None
) -> None:
    metadata = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
    store, conn = db.store, db.connect()
    aggregate = uuid.uuid4().hex
    try:
        server_accepts = execute(conn, "SELECT JSON_VALID(%s)", (metadata.decode(),)) == [(1,)]
        if not server_accepts:
            with pytest.raises(InvalidEventError) as caught:
                store.append(conn, ExpectedVersion.any(), [event(aggregate, metadata=metadata)])
            assert caught.value.field == "metadata"
            return
        store.append(conn, ExpectedVersion.any(), [event(aggregate, metadata=metadata)])
        [stored] = store.read_aggregate_stream(conn, "Shop", "Order", aggregate)
        assert stored.metadata == metadata
    finally:
        conn.rollback()
        conn.close()


def test_non_bmp_and_exact_bytes_in_every_text_field(any_path: Backend) -> None:
    store, conn = any_path.store, any_path.connection()
    text = "\U0001f600 é ß \U00010348 end  "
    original = Event(
        "Ctx\U0001f600",
        "Type\U00010348",
        "id-\U0001f600-\U0001f601",
        text,
        b"\x00\xff" * 10,
        trace_id=text,
        correlation_id=text,
        causation_id=text,
        metadata=json.dumps({"k": text}, ensure_ascii=False).encode(),
    )
    store.append(conn, ExpectedVersion.no_stream(), [original])
    conn.commit()
    [stored] = store.read_events(any_path.connection(), 0, 1)
    for name in (
        "bounded_context",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
        "trace_id",
        "correlation_id",
        "causation_id",
        "metadata",
        "created_at",
        "event_id",
    ):
        assert getattr(stored, name) == getattr(original, name), name


# -- concurrency ------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(slot: int) -> None:
        try:
            target(slot)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(slot,)) for slot in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def assert_consistent(db: Backend) -> None:
    """No duplicate versions, versions gapless from 1, heads match the events."""
    conn = db.connect()
    try:
        rows = execute(
            conn,
            "SELECT aggregate_id, count(*), count(DISTINCT aggregate_version), "
            "min(aggregate_version), max(aggregate_version) FROM events GROUP BY aggregate_id",
        )
        heads = dict(execute(conn, "SELECT aggregate_id, aggregate_version FROM aggregate_heads"))
    finally:
        conn.close()
    for aggregate_id, total, distinct, low, high in rows:
        assert total == distinct == high, aggregate_id
        assert low == 1
        assert heads[aggregate_id] == high


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "READ COMMITTED"])
@pytest.mark.parametrize("returning", [True, False], ids=["returning", "select-back"])
def test_eight_threads_on_one_aggregate(db: Backend, returning: bool, isolation: str) -> None:
    db.store.dialect.prefer_returning = returning  # type: ignore[attr-defined]
    store, rounds = db.store, 40
    outcomes: list[list[str]] = [[] for _ in range(8)]
    positions: list[int] = []

    def worker(slot: int) -> None:
        conn = db.connect()
        execute(conn, f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
        try:
            for i in range(rounds):
                try:
                    if i % 2:
                        result = store.append(conn, ExpectedVersion.any(), events(3, "hot"))
                    else:
                        version = store.read_aggregate_stream(conn, "Shop", "Order", "hot").version
                        conn.commit()  # a fresh snapshot for the next read
                        result = store.append(
                            conn, ExpectedVersion.exact(version), events(2, "hot")
                        )
                    conn.commit()
                    positions.extend(result.global_positions)
                    outcomes[slot].append("won")
                except OptimisticConcurrencyError:
                    conn.rollback()
                    outcomes[slot].append("conflict")
        finally:
            conn.close()

    run_threads(8, worker)
    flat = [o for slot in outcomes for o in slot]
    assert set(flat) <= {"won", "conflict"}
    assert "conflict" in flat  # the exact() appends did race
    assert_consistent(db)
    assert len(positions) == len(set(positions)) == db.count_events()
    assert sorted(positions) == [row[0] for row in stored_rows(db)]


def test_eight_threads_race_to_create_the_same_aggregates(db: Backend) -> None:
    store, rounds = db.store, 25
    barrier = threading.Barrier(8)
    winners: list[tuple[int, int]] = []

    def worker(slot: int) -> None:
        conn = db.connect()
        try:
            for i in range(rounds):
                barrier.wait(30)
                try:
                    store.append(conn, ExpectedVersion.no_stream(), events(2, f"new-{i}"))
                    conn.commit()
                    winners.append((i, slot))
                except OptimisticConcurrencyError:
                    conn.rollback()
        finally:
            conn.close()

    run_threads(8, worker)
    assert sorted(i for i, _ in winners) == list(range(rounds))
    assert db.count_events() == 2 * rounds
    assert_consistent(db)


def test_eight_threads_on_different_aggregates_never_conflict(db: Backend) -> None:
    store = db.store

    def worker(slot: int) -> None:
        conn = db.connect()
        try:
            for i in range(30):
                expected = ExpectedVersion.no_stream() if i == 0 else ExpectedVersion.exact(2 * i)
                store.append(conn, expected, events(2, f"own-{slot}"))
                conn.commit()
        finally:
            conn.close()

    run_threads(8, worker)
    assert db.count_events() == 8 * 30 * 2
    assert_consistent(db)


def test_an_open_append_does_not_block_appends_to_other_aggregates(db: Backend) -> None:
    """No table lock and no gap lock on the normal path: while one transaction
    holds appends to some aggregates, others append to neighbouring keys (new
    and existing) without waiting."""
    store = db.store
    setup = db.connection()
    for aggregate in ("k1", "k3", "k5"):
        store.append(setup, ExpectedVersion.any(), events(1, aggregate))
    setup.commit()
    holder = db.connection()
    store.append(holder, ExpectedVersion.any(), events(2, "k3"))
    store.append(holder, ExpectedVersion.exact(1), events(1, "k5"))
    store.append(holder, ExpectedVersion.no_stream(), events(1, "k7"))
    other = db.connection()
    execute(other, "SET SESSION innodb_lock_wait_timeout = 2")
    started = time.monotonic()
    store.append(other, ExpectedVersion.any(), events(1, "k1"))
    store.append(other, ExpectedVersion.no_stream(), events(1, "k2"))
    store.append(other, ExpectedVersion.no_stream(), events(1, "k4"))
    store.append(other, ExpectedVersion.any(), events(1, "k6"))
    store.append(other, ExpectedVersion.no_stream(), events(1, "k8"))
    other.commit()
    assert time.monotonic() - started < 1.5
    holder.commit()
    assert_consistent(db)


# -- other drivers and cursors ---------------------------------------------------


def test_dict_cursor_connections_work(db: Backend) -> None:
    conn = pymysql.connect(
        host=MYSQL_HOST,
        user="root",
        password="",
        database=db.database,
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        result = db.store.append(conn, ExpectedVersion.any(), events(2, "a"))
        conn.commit()
        assert [e.global_position for e in db.store.read_events(conn, 0, 10)] == list(
            result.global_positions
        )
    finally:
        conn.close()


def test_mysqlclient_connections_work(db: Backend) -> None:
    mysqldb = require("MySQLdb")  # the mysqlclient extra; skipped locally without it
    conn = mysqldb.connect(host=MYSQL_HOST, user="root", passwd="", db=db.database)
    try:
        store = db.store
        given_events = [event("a", created_at=instant) for instant in INSTANTS]
        result = store.append(conn, ExpectedVersion.no_stream(), given_events)
        assert db.count_events() == 0
        conn.rollback()
        result = store.append(conn, ExpectedVersion.no_stream(), given_events)
        conn.commit()
        stream = store.read_aggregate_stream(conn, "Shop", "Order", "a")
        assert [e.created_at for e in stream] == [e.created_at for e in given_events]
        assert [e.global_position for e in stream] == list(result.global_positions)
        with pytest.raises(OptimisticConcurrencyError):
            store.append(conn, ExpectedVersion.no_stream(), events(1, "a"))
        conn.rollback()

        conn.autocommit(True)  # no server_status: the store probes with a savepoint
        store.append(conn, ExpectedVersion.any(), events(2, "b"))
        assert db.count_events() == len(INSTANTS) + 2  # committed by the append
        conn.begin()
        store.append(conn, ExpectedVersion.any(), events(2, "c"))
        assert db.count_events() == len(INSTANTS) + 2  # inside the caller's transaction
        conn.rollback()
        assert db.count_events() == len(INSTANTS) + 2
    finally:
        conn.close()


@pytest.fixture(params=backends_and_apis(["mysql", "mysqlclient"]))
def every_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The store on each driver: PyMySQL and mysqlclient (blocking), asyncmy."""
    name, api = request.param
    b = make_backend(name, tmp_path, api=api)
    yield b
    for cleanup in reversed(b.cleanups):
        cleanup()


ESCAPED_BYTES = b"\\'\"\n\r\x00\x1a%s"
"""Every byte a backslash-escaping driver escapes, and a placeholder."""


@pytest.mark.parametrize(
    "sql_mode",
    [
        "NO_BACKSLASH_ESCAPES",
        "NO_BACKSLASH_ESCAPES,NO_ENGINE_SUBSTITUTION",  # not strict either
        "ANSI_QUOTES",
        "PAD_CHAR_TO_FULL_LENGTH",
        "ANSI",
    ],
)
def test_binary_values_round_trip_whatever_the_sql_mode(
    every_driver: Backend, sql_mode: str
) -> None:
    """Payloads, event ids and snapshot states are stored byte for byte
    whatever the session's sql_mode: with NO_BACKSLASH_ESCAPES the server
    takes a backslash literally, so a driver that escapes bytes with
    backslashes regardless (asyncmy) would store ``\\n`` for a newline, or
    end the literal early at an escaped quote."""
    db = every_driver
    conn = db.connection()
    execute(conn, f"SET SESSION sql_mode = '{sql_mode}'")
    event_id = uuid.UUID(bytes=ESCAPED_BYTES[:16].ljust(16, b"\\"))
    original = Event(
        "Shop",
        "Order",
        "a\\'\"%s",
        "Placed",
        ESCAPED_BYTES + bytes(range(256)),
        event_id=event_id,
        metadata=b'{"quote": "\\"\\\\", "s": "%s"}',
        causation_id="c\\'\"\n",
    )
    db.store.append(conn, ExpectedVersion.no_stream(), [original])
    state = ESCAPED_BYTES * 3
    db.store.save_snapshot(conn, Snapshot("Shop", "Order", original.aggregate_id, 1, 1, state))
    conn.commit()
    reader = db.connection()
    [stored] = db.store.read_aggregate_stream(reader, "Shop", "Order", original.aggregate_id)
    assert (stored.payload, stored.event_id, stored.metadata, stored.causation_id) == (
        original.payload,
        event_id,
        original.metadata,
        original.causation_id,
    )
    snapshot = db.store.read_snapshot(reader, "Shop", "Order", original.aggregate_id, 1)
    assert snapshot is not None
    assert snapshot.state == state
    reader.rollback()


# -- projection hooks ---------------------------------------------------------


def test_first_checkpoints_of_two_projections_do_not_lock_each_other(db: Backend) -> None:
    """Two projections starting together both store their first checkpoint
    without waiting for each other: an UPDATE that finds no row would gap-lock
    where the row goes, so that one INSERT waits or two deadlock (and a batch
    is rolled back and handed to its handler again)."""
    store, dialect = db.store, db.store.dialect
    first, second = db.connection(), db.connection()
    execute(second, "SET SESSION innodb_lock_wait_timeout = 3")
    assert store._run(first, dialect.load_checkpoint("alpha")) == 0
    assert store._run(first, dialect.advance_checkpoint("alpha", 0, 5)) is True  # left open
    outcome: list[Any] = []

    def advance_second() -> None:
        try:
            outcome.append(store._run(second, dialect.load_checkpoint("beta")))
            outcome.append(store._run(second, dialect.advance_checkpoint("beta", 0, 7)))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=advance_second)
    started = time.monotonic()
    thread.start()
    thread.join(10)
    assert outcome == [0, True]
    assert time.monotonic() - started < 1.0, "waited for the other projection's transaction"
    first.commit()
    second.commit()
    reader = db.connection()
    assert (store.get_checkpoint(reader, "alpha"), store.get_checkpoint(reader, "beta")) == (5, 7)


def transaction_of(conn: Any, thread_id: int) -> int | None:
    """The active InnoDB transaction of connection ``thread_id``, from the status.
    Read as bytes: the status quotes every session's SQL on the server, and
    another worker's test may be running one that is not UTF-8 (see
    test_horizon_probe_reads_a_status_quoting_undecodable_sql)."""
    execute(conn, "SET character_set_results = binary")
    status = bytes(execute(conn, "SHOW ENGINE INNODB STATUS")[0][2]).decode("latin-1")
    for block in status.split("---TRANSACTION ")[1:]:
        first_line = block.split("\n")[0]
        if f"thread id {thread_id}," in block and ", ACTIVE" in first_line:
            trx = first_line.split(",")[0]
            return int(trx) if trx.isdigit() else None  # no id yet: nothing written
    return None


def test_horizon_probe_sees_open_writers_and_only_them(db: Backend) -> None:
    store = db.store
    writer, prober = db.connection(), db.connection()
    store.append(writer, ExpectedVersion.any(), events(1, "a"))
    writer.commit()
    idle = store._run(prober, store.dialect.horizon_probe())
    prober.commit()
    store.append(writer, ExpectedVersion.any(), events(1, "a"))  # left open
    busy = store._run(prober, store.dialect.horizon_probe())
    prober.commit()
    open_trx = transaction_of(db.connection(), writer.thread_id())
    writer.commit()
    after = store._run(prober, store.dialect.horizon_probe())
    assert (idle.visible, busy.visible, after.visible) == (1, 1, 2)
    assert idle.writers is not None
    assert busy.writers is not None
    assert after.writers is not None
    assert open_trx is not None
    assert open_trx in busy.writers
    assert open_trx not in idle.writers
    assert open_trx not in after.writers
    # the prober's own transaction, even when it has written, is not a writer
    store.append(prober, ExpectedVersion.any(), events(1, "b"))
    own = store._run(prober, store.dialect.horizon_probe())
    own_trx = transaction_of(db.connection(), prober.thread_id())
    prober.rollback()
    assert own_trx is not None
    assert own.writers is not None
    assert own_trx not in own.writers


def test_horizon_probe_reads_a_status_quoting_undecodable_sql(db: Backend) -> None:
    """The status quotes what other sessions run: a binary literal's raw bytes
    (or SQL cut inside a character) are not UTF-8, and a driver decoding the
    status as text fails. The probe still sees that writer, and the
    connection's own results stay text."""
    store = db.store
    writer, prober = db.connection(), db.connection()
    store.append(writer, ExpectedVersion.any(), events(1, "a"))  # left open
    open_trx = transaction_of(db.connection(), writer.thread_id())
    running = threading.Thread(
        target=writer.query, args=(b"SELECT SLEEP(1), _binary'\xed\xa0\x80\xff'",)
    )
    before = execute(prober, "SELECT @@character_set_results, 'text'")
    prober.commit()
    running.start()
    try:
        time.sleep(0.3)
        with pytest.raises(UnicodeDecodeError):  # what a plain read of it does
            execute(db.connection(), "SHOW ENGINE INNODB STATUS")
        probe = store._run(prober, store.dialect.horizon_probe())
        store._run(prober, store.dialect.prepare_processor())  # reads the status too
        after = execute(prober, "SELECT @@character_set_results, 'text'")
    finally:
        running.join()
        writer.rollback()
    assert probe.writers is not None
    assert open_trx in probe.writers
    assert after == before
    assert isinstance(after[0][1], str)


def test_a_killed_connection_is_a_connection_error(db: Backend) -> None:
    conn = db.connection()
    thread_id = conn.thread_id()
    execute(db.connection(), f"KILL {thread_id}")
    with pytest.raises(pymysql.err.OperationalError) as caught:
        db.store.read_events(conn, 0, 1)
    assert db.store.dialect.is_connection_error(caught.value)
    assert not db.store.dialect.is_connection_error(ValueError("x"))
