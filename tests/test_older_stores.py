"""A store made before pupsourcing added one of its own tables (dead
letters, partition layouts, leases, snapshots): by the Go library, or by an
older release of pupsourcing. Whatever needs such a table either works
without it or raises one :class:`~pupsourcing.SchemaError` naming the table
and ``pupsourcing migrate`` / ``create_schema``, having written nothing;
after ``create_schema`` it works. Each backend and both APIs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Backend, require
from domain_model import Order, codec
from helpers import event, query
from pupsourcing import ExpectedVersion, PersistedEvent, SchemaError
from pupsourcing.aio import AsyncRepository
from pupsourcing.domain import Repository
from pupsourcing.projection import ClaimingRunner, ProcessorConfig
from pupsourcing.store.snapshots import Snapshot

pytestmark = pytest.mark.both_apis


def drop(backend: Backend, table: str) -> None:
    conn = backend.connect()
    try:
        query(conn, f"DROP TABLE {table}")
        conn.commit()
    finally:
        conn.close()


def assert_names(error: SchemaError, table: str) -> None:
    assert (error.table, error.column) == (table, None)
    assert table in str(error)
    assert "pupsourcing migrate" in str(error)
    assert "create_schema" in str(error)
    assert error.__cause__ is not None  # the driver's error


class FailsAt:
    """Fails on the event at ``position``; keeps what it handled in ``tx``."""

    name = "fails"

    def __init__(self, position: int) -> None:
        self.position = position

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        if event.global_position == self.position:
            raise RuntimeError("poison")
        query(tx, f"INSERT INTO handled (position) VALUES ({event.global_position})")


def test_the_dead_letter_policy_without_its_table_stops_and_moves_nothing(
    backend: Backend,
) -> None:
    config = backend.store.config
    drop(backend, config.dead_letters_table)
    conn = backend.connection()
    query(conn, "CREATE TABLE handled (position BIGINT PRIMARY KEY)")
    backend.store.append(conn, ExpectedVersion.any(), [event(), event(), event()])
    conn.commit()
    policy = ProcessorConfig(on_failure="dead_letter")
    processor = backend.Processor(backend.connect, backend.store, policy)
    with processor, pytest.raises(SchemaError) as caught:
        processor.catch_up(FailsAt(2))
    assert_names(caught.value, config.dead_letters_table)
    assert backend.checkpoints().get("fails", 0) == 0
    assert backend.scalar("SELECT count(*) FROM handled") == 0

    backend.store.create_schema(conn)
    conn.commit()
    with backend.Processor(backend.connect, backend.store, policy) as processor:
        processor.catch_up(FailsAt(2))
    assert backend.checkpoints()["fails"] == 3
    assert [d.global_position for d in backend.store.list_dead_letters(conn)] == [2]
    assert backend.scalar("SELECT count(*) FROM handled") == 2


def test_the_dead_letter_policy_without_its_table_stops_before_any_event(
    backend: Backend,
) -> None:
    """At the start, not at the first failure (weeks later, say): nothing
    is handled that could need it."""
    drop(backend, backend.store.config.dead_letters_table)
    conn = backend.connection()
    query(conn, "CREATE TABLE handled (position BIGINT PRIMARY KEY)")
    backend.store.append(conn, ExpectedVersion.any(), [event(), event()])
    conn.commit()
    policy = ProcessorConfig(on_failure="dead_letter")
    processor = backend.Processor(backend.connect, backend.store, policy)
    with processor, pytest.raises(SchemaError) as caught:
        processor.catch_up(FailsAt(0))
    assert_names(caught.value, backend.store.config.dead_letters_table)
    assert backend.checkpoints().get("fails", 0) == 0
    assert backend.scalar("SELECT count(*) FROM handled") == 0
    with backend.Processor(backend.connect, backend.store) as processor:  # "stop": no table
        assert processor.catch_up(FailsAt(0)) == 2


def test_store_calls_on_a_missing_table_name_it(backend: Backend) -> None:
    store, config = backend.store, backend.store.config
    for table in (config.dead_letters_table, config.leases_table, config.snapshots_table):
        drop(backend, table)
    conn = backend.connection()
    snapshot = Snapshot("Shop", "Order", "o-1", 1, 1, b"{}")
    calls = [
        (config.dead_letters_table, lambda: store.list_dead_letters(conn)),
        (config.dead_letters_table, lambda: store.count_dead_letters(conn)),
        (config.leases_table, lambda: store.list_leases(conn)),
        (config.snapshots_table, lambda: store.read_snapshot(conn, "Shop", "Order", "o-1", 1)),
        (config.snapshots_table, lambda: store.save_snapshot(conn, snapshot)),
    ]
    for table, call in calls:
        with pytest.raises(SchemaError) as caught:
            call()
        conn.rollback()
        assert_names(caught.value, table)


def repository(backend: Backend) -> Any:
    if backend.api == "async":
        from test_domain_repository import Blocking

        repo = AsyncRepository(backend.store.raw, Order, codec(), snapshot_every=1)
        return Blocking(backend, repo)
    return Repository(backend.store, Order, codec(), snapshot_every=1)


def test_a_repository_with_snapshots_and_no_table_writes_nothing(backend: Backend) -> None:
    table = backend.store.config.snapshots_table
    drop(backend, table)
    repo, conn = repository(backend), backend.connection()
    order = Order("order-1")
    order.place("ada")
    with pytest.raises(SchemaError) as caught:
        repo.save(conn, order)
    assert_names(caught.value, table)
    conn.commit()  # what a caller that goes on anyway commits: nothing
    assert backend.count_events() == 0
    assert order.pending_events  # still to be saved

    # Loading with snapshots reads the table first: the same error.
    placed = event("order-2", bounded_context="Sales", aggregate_type="Order")
    backend.store.append(conn, ExpectedVersion.no_stream(), [placed])
    conn.commit()
    with pytest.raises(SchemaError) as caught:
        repo.load(conn, "order-2")
    conn.rollback()
    assert_names(caught.value, table)

    backend.store.create_schema(conn)
    conn.commit()
    repo.save(conn, order)
    conn.commit()
    assert repo.load(conn, "order-1").customer == "ada"


class Seen:
    name = "seen"

    def __init__(self) -> None:
        self.positions: list[int] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.positions.append(event.global_position)


class AsyncSeen(Seen):
    async def handle(self, event: PersistedEvent, tx: Any) -> None:  # type: ignore[override]
        self.positions.append(event.global_position)


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_a_claiming_runner_without_the_leases_table_stops_at_once(
    name: str, api: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Not retried as an outage of the database, for ever: the table does
    not come back by itself."""
    from pupsourcing.aio import AsyncClaimingRunner

    backend = make_store_backend(name)
    table = backend.store.config.leases_table
    drop(backend, table)
    conn = backend.connection()
    backend.store.append(conn, ExpectedVersion.any(), [event()])
    conn.commit()
    config = ProcessorConfig(total_partitions=2, poll_interval=0.01)
    seen = Seen() if api == "blocking" else AsyncSeen()

    def blocking() -> None:
        stop = threading.Event()
        timer = threading.Timer(10, stop.set)  # what the fault was: runs until stopped
        timer.start()
        try:
            ClaimingRunner(backend.connect, backend.store, config, lease_ttl=1).run(seen, stop=stop)
        finally:
            timer.cancel()

    async def asyncio_() -> None:
        runner = AsyncClaimingRunner(backend.open_async, backend.async_store(), config, lease_ttl=1)
        await asyncio.wait_for(runner.run(seen), 10)

    started = time.monotonic()
    with pytest.raises(SchemaError) as caught:
        blocking() if api == "blocking" else asyncio.run(asyncio_())
    assert time.monotonic() - started < 5
    assert_names(caught.value, table)
    assert seen.positions == []


@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_a_relay_without_the_leases_table_publishes_everything_once(
    name: str, make_store_backend: Callable[..., Backend], caplog: pytest.LogCaptureFixture
) -> None:
    """Without the lease, copies are not kept apart (warned); the relay
    itself works, its checkpoint in the Go library's table."""
    from nats_helpers import jetstream
    from test_relay_nats import assert_exactly_once_in_order, catch_up, relay

    backend = make_store_backend(name)
    table = backend.store.config.leases_table
    drop(backend, table)
    conn = backend.connection()
    backend.store.append(conn, ExpectedVersion.any(), [event("o-1"), event("o-1")])
    conn.commit()
    js = next(jetstream())
    stream, prefix = js.new_stream()
    with caplog.at_level("WARNING", logger="pupsourcing"):
        assert catch_up(relay(backend, js, stream, prefix, name="old")) == 2
        assert catch_up(relay(backend, js, stream, prefix, name="old")) == 0
    assert backend.checkpoints()["relay_old"] == 2
    assert_exactly_once_in_order(js.messages(stream), backend)
    assert f"no {table} table" in caplog.text
    assert "pupsourcing migrate" in caplog.text


@pytest.mark.filterwarnings("ignore::pupsourcing.adapters.mysql.CollationWarning")  # Go's tables
@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_the_console_api_on_a_go_store_answers_or_says_to_migrate(
    name: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Each path answers, or (the events' reads on PostgreSQL, which read
    ``metadata_raw``) a JSON 503 naming the column and ``pupsourcing
    migrate``: never a 500."""
    from pupsourcing.urls import database
    from test_console import in_process
    from test_go_schema import replace_with_go_schema

    backend = make_store_backend(name)
    conn = backend.connection()
    replace_with_go_schema(conn, name)
    for table in ("dead_letters", "layouts", "leases", "snapshots"):
        query(conn, f"DROP TABLE {getattr(backend.store.config, table + '_table')}")
    query(
        conn,
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
        "aggregate_version) VALUES ('Shop', 'Order', 'go-1', 0)",
    )
    query(conn, "INSERT INTO projection_checkpoints (projection_name) VALUES ('orders')")
    conn.commit()
    db = database(backend.url, backend.store.config, create=False)
    paths = [
        "/api/head",
        "/api/projections",
        "/api/overview",
        "/api/streams/Shop/Order/go-1",
        "/api/events",
        "/api/log",
        "/api/aggregates?prefix=go",
        "/api/dead-letters",
        "/streams/Shop/Order/go-1",
        "/log",
    ]
    for path in paths:
        response = in_process(db, path, raise_errors=False)
        assert response.status_code in (200, 404, 503), (path, response.text)
        if response.status_code == 503:
            assert name == "postgres"
            assert "metadata_raw" in response.text, path
            assert "pupsourcing migrate" in response.text, path


@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_the_dead_letters_metric_of_a_store_without_the_table_is_empty(
    name: str, make_store_backend: Callable[..., Backend], caplog: pytest.LogCaptureFixture
) -> None:
    """None can have been recorded: an empty gauge, no warning of an outage."""
    require("prometheus_client")
    from pupsourcing.metrics import DeadLettersCollector

    backend = make_store_backend(name)
    config = backend.store.config
    drop(backend, config.dead_letters_table)
    drop(backend, config.layouts_table)
    collector = DeadLettersCollector(backend.connect, backend.store)
    with caplog.at_level("WARNING", logger="pupsourcing"):
        [family] = list(collector.collect())
        [family] = list(collector.collect())  # the connection's session still usable
    assert family.samples == []
    assert caplog.records == []


def catalog(backend: Backend, conn: Any) -> dict[str, set[tuple[Any, ...]]]:
    """Every table's columns (name, type, nullability, default) and indexes."""
    if backend.name == "postgres":
        where = (backend.schema,)
        columns = query(
            conn,
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = %s",
            where,
        )
        indexes = query(
            conn,
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
            where,
        )
    elif backend.name == "mysql":
        where = (backend.database,)
        columns = query(
            conn,
            "SELECT table_name, column_name, column_type, is_nullable, column_default, "
            "collation_name, extra FROM information_schema.columns WHERE table_schema = %s",
            where,
        )
        indexes = query(
            conn,
            "SELECT table_name, index_name, seq_in_index, column_name, non_unique "
            "FROM information_schema.statistics WHERE table_schema = %s",
            where,
        )
    else:
        tables = [r[0] for r in query(conn, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = [
            (table, *row[1:5])
            for table in tables
            for row in query(conn, f"PRAGMA table_info({table})")
        ]
        indexes = query(conn, "SELECT tbl_name, name, sql FROM sqlite_master WHERE type = 'index'")
    conn.rollback()
    return {"columns": {tuple(r) for r in columns}, "indexes": {tuple(r) for r in indexes}}


def go_append_sql(name: str) -> list[str]:
    """How the Go library appends (its columns only) and moves its checkpoint."""
    if name == "postgres":
        return [
            "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
            "event_id, event_type, event_version, payload, metadata) VALUES ('Shop', 'Order', "
            "'go-1', 2, gen_random_uuid(), 'Paid', 1, '\\x7b7d', '{}')",
            "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, updated_at) VALUES ('Shop', 'Order', 'go-1', 2, NOW()) "
            "ON CONFLICT (bounded_context, aggregate_type, aggregate_id) "
            "DO UPDATE SET aggregate_version = 2, updated_at = NOW()",
            "INSERT INTO projection_checkpoints (projection_name, last_global_position, "
            "updated_at) VALUES ('go_projection', 2, NOW()) ON CONFLICT (projection_name) "
            "DO UPDATE SET last_global_position = 2, updated_at = NOW()",
        ]
    if name == "mysql":
        return [
            "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
            "event_id, event_type, event_version, payload, metadata) VALUES ('Shop', 'Order', "
            "'go-1', 2, UNHEX(REPLACE(UUID(), '-', '')), 'Paid', 1, '{}', '{}')",
            "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version) VALUES ('Shop', 'Order', 'go-1', 2) "
            "ON DUPLICATE KEY UPDATE aggregate_version = 2",
            "INSERT INTO projection_checkpoints (projection_name, last_global_position) "
            "VALUES ('go_projection', 2) ON DUPLICATE KEY UPDATE last_global_position = 2",
        ]
    return [
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, event_version, payload, metadata) VALUES ('Shop', 'Order', "
        "'go-1', 2, lower(hex(randomblob(16))), 'Paid', 1, X'7b7d', '{}')",
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, "
        "aggregate_version) VALUES ('Shop', 'Order', 'go-1', 2) ON CONFLICT "
        "(bounded_context, aggregate_type, aggregate_id) DO UPDATE SET aggregate_version = 2",
        "INSERT INTO projection_checkpoints (projection_name, last_global_position) "
        "VALUES ('go_projection', 2) ON CONFLICT (projection_name) "
        "DO UPDATE SET last_global_position = 2",
    ]


GO_INDEXES = [  # the Go library's migration for SQLite and MySQL creates them too
    "CREATE INDEX idx_events_aggregate "
    "ON events (bounded_context, aggregate_type, aggregate_id, aggregate_version)",
    "CREATE INDEX idx_events_event_type ON events (event_type, global_position)",
    "CREATE INDEX idx_events_correlation ON events (correlation_id)",
    "CREATE INDEX idx_aggregate_heads_updated ON aggregate_heads (updated_at)",
    "CREATE INDEX idx_projection_checkpoints_updated ON projection_checkpoints (updated_at)",
]


@pytest.mark.filterwarnings("ignore::pupsourcing.adapters.mysql.CollationWarning")  # Go's tables
@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql"])
def test_migrate_adds_exactly_what_a_go_store_lacks(
    name: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Nullable columns and pupsourcing's own tables; the Go library's
    columns, indexes and rows as they were, and its statements still work."""
    from cli_helpers import cli
    from test_go_schema import replace_with_go_schema

    backend = make_store_backend(name)
    config = backend.store.config
    conn = backend.connection()
    replace_with_go_schema(conn, name)
    if name != "postgres":  # (its GO_DDL has them)
        for sql in GO_INDEXES:
            if name == "sqlite" and "correlation" in sql:
                sql += " WHERE correlation_id IS NOT NULL"
            query(conn, sql)
    own = [config.dead_letters_table, config.layouts_table]
    own += [config.leases_table, config.snapshots_table]
    for table in own:
        query(conn, f"DROP TABLE {table}")
    go_sql = go_append_sql(name)
    query(conn, go_sql[0].replace("2,", "1,", 1).replace("'Paid'", "'Placed'"))
    query(conn, go_sql[1].replace("2", "1"))
    query(conn, go_sql[2].replace("2", "1"))
    conn.commit()
    before = catalog(backend, conn)
    rows = {t: query(conn, f"SELECT * FROM {t}") for t in ("events", "aggregate_heads")}
    conn.rollback()

    for _ in range(2):  # and again: nothing more
        result = cli("migrate", "--db", backend.url)
        assert result.returncode == 0, result.stderr
    after = catalog(backend, conn)
    assert {c[0] for c in after["columns"]} - {c[0] for c in before["columns"]} == set(own)
    added = {c[:2] for c in after["columns"] - before["columns"] if c[0] not in own}
    expected = {("events", "partition_hash")}
    if name == "postgres":
        expected.add(("events", "metadata_raw"))
    assert added == expected
    assert before["columns"] <= after["columns"]  # same types, nullability, defaults
    assert {i for i in after["indexes"] if i[0] not in own} == before["indexes"]
    for table, stored in rows.items():  # the Go library's columns come first
        assert [r[: len(stored[0])] for r in query(conn, f"SELECT * FROM {table}")] == stored
    conn.rollback()

    for sql in go_sql:
        query(conn, sql)
    conn.commit()
    stream = backend.store.read_aggregate_stream(conn, "Shop", "Order", "go-1")
    assert [(e.event_type, e.aggregate_version) for e in stream] == [("Placed", 1), ("Paid", 2)]
    assert backend.checkpoints()["go_projection"] == 2
    backend.store.append(conn, ExpectedVersion.exact(2), [event("go-1")])
    conn.commit()
    assert backend.store.read_aggregate_stream(conn, "Shop", "Order", "go-1").version == 3
