"""The library under non-default transaction isolation levels, as users set
them database- or role-wide: PostgreSQL ``default_transaction_isolation``
REPEATABLE READ and SERIALIZABLE, MariaDB READ COMMITTED and SERIALIZABLE."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Backend
from helpers import event
from pupsourcing import ExpectedVersion, OptimisticConcurrencyError

LEVELS = [
    ("postgres", "repeatable read"),
    ("postgres", "serializable"),
    ("mysql", "READ-COMMITTED"),
    ("mysql", "SERIALIZABLE"),
    ("mysql", "REPEATABLE-READ snapshot"),  # MariaDB 11.6's default
]


def isolated(backend: Backend, level: str) -> Backend:
    """``backend`` whose connections default to ``level``, as a role-wide setting would."""
    plain = backend.connect

    def connect() -> Any:
        conn = plain()
        cursor = conn.cursor()
        if backend.name == "postgres":
            cursor.execute(f"SET default_transaction_isolation = '{level}'")
        else:
            cursor.execute(f"SET SESSION tx_isolation = '{level.split()[0]}'")
            if level.endswith(" snapshot"):
                cursor.execute("SET SESSION innodb_snapshot_isolation = ON")
        cursor.close()
        conn.commit()
        return conn

    backend.connect = connect
    return backend


@pytest.mark.parametrize(("name", "level"), LEVELS)
def test_concurrent_appends(
    name: str, level: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Concurrent appends to different aggregates all succeed; to one
    aggregate, a lost race is an OptimisticConcurrencyError (documented for
    PostgreSQL even with ``any()``), never a raw driver error."""
    backend = isolated(make_store_backend(name), level)
    store = backend.store
    conns = [backend.connection() for _ in range(4)]
    errors: list[BaseException] = []
    conflicts = [0]

    def worker(i: int, same: bool, barrier: threading.Barrier) -> None:
        conn = conns[i]
        barrier.wait()
        for _ in range(20):
            aggregate = "shared" if same else f"agg-{i}"
            try:
                store.append(conn, ExpectedVersion.any(), [event(aggregate)])
                conn.commit()
            except OptimisticConcurrencyError:
                conn.rollback()
                conflicts[0] += 1
            except Exception as exc:
                conn.rollback()
                errors.append(exc)

    for same in (False, True):
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=worker, args=(i, same, barrier)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not same:
            assert conflicts == [0]
    assert errors == []


class _Idle:
    name = "iso"

    def handle(self, event: Any, tx: Any) -> None:
        pass


def _claims_partition_0(runner: Any, deadline: float) -> bool:
    """Whether ``runner`` holds partition 0 of ``iso`` (and nothing else)
    by the monotonic ``deadline``."""
    while runner.held() != {"iso": [0]} and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(runner.held() == {"iso": [0]})


def _holding_the_lease_row(backend: Backend) -> Any:
    """A connection whose open transaction has locked the lease row of
    projection ``iso``'s partition 0 (made if missing) until it ends."""
    store = backend.store
    setup = backend.connection()
    store._run(setup, store.dialect.leases.ensure("iso", 1))
    setup.commit()
    holder = backend.connection()
    cursor = holder.cursor()
    cursor.execute(
        "UPDATE projection_leases SET heartbeat = heartbeat + 1 "
        "WHERE projection_name = 'iso' AND partition_key = 0"
    )
    cursor.close()
    return holder


@pytest.mark.parametrize(("name", "level"), LEVELS)
def test_a_claim_that_waited_on_a_lease_row_is_no_lost_connection(
    name: str, level: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Another process's lease change that commits while the runner's claim
    waits for its row: under READ COMMITTED the claim reads the row again;
    under PostgreSQL's REPEATABLE READ it is a serialization failure, which
    the lease loop took for a lost connection (warned, reconnected)."""
    from helpers import LogRecords
    from pupsourcing.projection import ClaimingRunner, ProcessorConfig

    backend = isolated(make_store_backend(name), level)
    store = backend.store
    holder = _holding_the_lease_row(backend)  # until its commit below
    records = LogRecords(f"iso-claim-{name}-{level}")
    config = ProcessorConfig(total_partitions=1, poll_interval=0.05, logger=records.logger)
    runner = ClaimingRunner(backend.connect, store, config, lease_ttl=3, owner="a")
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(_Idle(),), kwargs={"stop": stop})
    thread.start()
    try:
        time.sleep(0.5)  # the runner's claim waits for the row
        holder.commit()
        assert _claims_partition_0(runner, time.monotonic() + 5)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert records.messages(logging.WARNING) == []


@pytest.mark.parametrize("name", ["postgres", "mysql"])
def test_a_lease_lock_time_out_keeps_the_connection(
    name: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A lock wait time-out in the lease loop is retried on the same
    connection, not taken for a lost one (closed and opened again)."""
    from helpers import LogRecords
    from pupsourcing.projection import ClaimingRunner, ProcessorConfig

    backend = make_store_backend(name)
    plain = backend.connect
    lease_thread: list[threading.Thread] = []
    opened = [0]

    def connect() -> Any:
        conn = plain()
        cursor = conn.cursor()
        if name == "postgres":
            cursor.execute("SET lock_timeout = '200ms'")
        else:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cursor.close()
        conn.commit()
        if threading.current_thread() in lease_thread:
            opened[0] += 1
        return conn

    store = backend.store
    holder = _holding_the_lease_row(backend)
    records = LogRecords(f"iso-timeout-{name}")
    config = ProcessorConfig(total_partitions=1, poll_interval=0.05, logger=records.logger)
    runner = ClaimingRunner(connect, store, config, lease_ttl=1.5, owner="a")
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(_Idle(),), kwargs={"stop": stop})
    lease_thread.append(thread)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not records.messages(logging.WARNING) and time.monotonic() < deadline:
            time.sleep(0.02)
        holder.commit()
        assert _claims_partition_0(runner, deadline)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert opened[0] == 1
    assert records.messages(logging.WARNING)  # the time-out is still told


@pytest.mark.parametrize(("name", "level"), LEVELS)
def test_a_checkpoint_moved_under_a_batch(
    name: str, level: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Another processor moves the checkpoint while a batch is handled: the
    batch is rolled back and the processor goes on from the moved checkpoint
    (under REPEATABLE READ the compare-and-set is a serialization failure,
    told and handled as the moved checkpoint it is), never an error nor an
    event handled from a stale checkpoint."""
    from helpers import LogRecords
    from pupsourcing.projection import ProcessorConfig

    backend = isolated(make_store_backend(name), level)
    store = backend.store
    conn = backend.connection()
    for i in range(5):
        store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
    conn.commit()
    other = backend.connection()
    store.update_checkpoint(other, "iso", 0)
    other.commit()
    seen: list[int] = []

    class Moved:
        name = "iso"

        def handle(self, e: Any, tx: Any) -> None:
            if not seen:
                store.update_checkpoint(other, "iso", 3)  # another processor's batch
                other.commit()
            seen.append(e.global_position)

    records = LogRecords(f"iso-moved-{name}-{level}")
    config = ProcessorConfig(batch_size=2, poll_interval=0.01, logger=records.logger)
    processor = backend.Processor(backend.connect, store, config)
    try:
        processor.catch_up(Moved())
    finally:
        processor.close()
    assert seen == [1, 2, 4, 5]  # the batch of 1 and 2, rolled back; then from 3
    assert store.get_checkpoint(conn, "iso") == 5
    # Told as the race it is, as under READ COMMITTED: not a batch that
    # "could not run", backed off as a busy database.
    [warning] = records.messages(logging.WARNING)
    assert "checkpoint iso was moved by another processor 1 time" in warning


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_a_handler_write_that_loses_a_race_is_still_retried(
    level: str, make_store_backend: Callable[..., Backend]
) -> None:
    """A serialization failure of the handler's own write (another session
    changed its read-model row) is no moved checkpoint: the batch is
    retried as a transient failure, each event's write committed once."""
    from helpers import LogRecords
    from pupsourcing.projection import ProcessorConfig

    backend = isolated(make_store_backend("postgres"), level)
    store = backend.store
    conn, other = backend.connection(), backend.connection()
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE rm (id int PRIMARY KEY, n int NOT NULL)")
    cursor.execute("INSERT INTO rm VALUES (1, 0)")
    cursor.close()
    for i in range(3):
        store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
    conn.commit()
    raced: list[int] = []

    class Counting:
        name = "iso"

        def handle(self, e: Any, tx: Any) -> None:
            cur = tx.cursor()
            cur.execute("SELECT n FROM rm WHERE id = 1")  # the snapshot is taken
            if not raced:
                raced.append(e.global_position)
                theirs = other.cursor()
                theirs.execute("UPDATE rm SET n = n + 100 WHERE id = 1")
                theirs.close()
                other.commit()
            cur.execute("UPDATE rm SET n = n + 1 WHERE id = 1")
            cur.close()

    records = LogRecords(f"iso-handler-race-{level}")
    config = ProcessorConfig(poll_interval=0.01, logger=records.logger)
    processor = backend.Processor(backend.connect, store, config)
    try:
        processor.catch_up(Counting())
    finally:
        processor.close()
    cursor = conn.cursor()
    cursor.execute("SELECT n FROM rm WHERE id = 1")
    assert cursor.fetchone()[0] == 103
    cursor.close()
    assert store.get_checkpoint(conn, "iso") == 3
    [warning] = records.messages(logging.WARNING)
    assert "batch could not run (could not serialize access" in warning


@pytest.mark.parametrize(
    # (MariaDB's SERIALIZABLE reads lock: the other writer would wait for this one.)
    ("name", "level"),
    [level for level in LEVELS if level != ("mysql", "SERIALIZABLE")],
)
def test_an_append_after_a_read_loses_a_race_as_a_conflict(
    name: str, level: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Load (read the stream), another writer appends, save: the save is an
    OptimisticConcurrencyError whatever the isolation level (under MariaDB's
    snapshot isolation the server says "Record has changed since last read")."""
    backend = isolated(make_store_backend(name), level)
    store = backend.store
    mine, theirs = backend.connection(), backend.connection()
    store.append(theirs, ExpectedVersion.any(), [event("a")])
    theirs.commit()
    seen = store.read_aggregate_stream(mine, "Shop", "Order", "a")
    store.append(theirs, ExpectedVersion.exact(1), [event("a")])
    theirs.commit()
    with pytest.raises(OptimisticConcurrencyError):
        store.append(mine, ExpectedVersion.exact(len(seen)), [event("a")])
    mine.rollback()
    store.read_aggregate_stream(mine, "Shop", "Order", "a")
    store.append(theirs, ExpectedVersion.exact(2), [event("a")])
    theirs.commit()
    if name == "postgres":  # documented: even with any()
        with pytest.raises(OptimisticConcurrencyError):
            store.append(mine, ExpectedVersion.any(), [event("a")])
    mine.rollback()
    # Another aggregate's append does not conflict.
    store.read_aggregate_stream(mine, "Shop", "Order", "a")
    store.append(theirs, ExpectedVersion.any(), [event("b")])
    theirs.commit()
    store.append(mine, ExpectedVersion.exact(3), [event("a")])
    mine.commit()


def test_a_projection_batch_holds_no_append_back_under_mariadb_serializable(
    make_store_backend: Callable[..., Backend],
) -> None:
    """MariaDB's SERIALIZABLE makes plain reads locking: the batch's read of
    the newest events locked the end of the events table until the batch
    committed, so every append waited for the projection's handler."""
    from pupsourcing.projection import ProcessorConfig

    backend = isolated(make_store_backend("mysql"), "SERIALIZABLE")
    store = backend.store
    conn, other = backend.connection(), backend.connection()
    for i in range(3):
        store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
    conn.commit()
    entered = threading.Event()
    took: list[float] = []

    class Slow:
        name = "slow"

        def handle(self, e: Any, tx: Any) -> None:
            if e.global_position == 3:
                entered.set()
                time.sleep(1)

    def append() -> None:
        entered.wait(10)
        started = time.monotonic()
        store.append(other, ExpectedVersion.any(), [event("late")])
        other.commit()
        took.append(time.monotonic() - started)

    appender = threading.Thread(target=append)
    appender.start()
    processor = backend.Processor(backend.connect, store, ProcessorConfig(poll_interval=0.01))
    try:
        processor.catch_up(Slow())
    finally:
        processor.close()
        appender.join()
    assert took[0] < 0.5


@pytest.mark.parametrize("before", ["new tables", "go tables"])
@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_a_migration_that_waited_for_another_locks_out_no_writer(
    level: str, before: str, make_store_backend: Callable[..., Backend]
) -> None:
    """Two migrations at once (two deploys) under REPEATABLE READ or
    SERIALIZABLE: the second one's snapshot is taken as it asks for the
    schema lock, before the first one commits. What the first one created
    (tables and indexes; columns added to the Go library's tables) is
    there all the same: the second must not run its ``CREATE INDEX`` (a
    SHARE lock) or ``ADD COLUMN`` (ACCESS EXCLUSIVE) again, each holding
    every append back until it commits."""
    from helpers import query
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.store import StoreConfig
    from test_go_schema import replace_with_go_schema

    backend = isolated(make_store_backend("postgres"), level)
    first, second, writer = backend.connection(), backend.connection(), backend.connection()
    if before == "go tables":
        store = backend.store
        replace_with_go_schema(first, "postgres")
        first.commit()
    else:
        store = PostgresStore(StoreConfig("race_events", "race_checkpoints", "race_heads"))
    store.create_schema(first)  # holds the schema lock until it commits
    failures: list[BaseException] = []

    def migrate_too() -> None:
        try:
            store.create_schema(second)  # waits; its transaction stays open
        except Exception as exc:
            failures.append(exc)

    other = threading.Thread(target=migrate_too)
    other.start()
    time.sleep(0.5)  # waiting for the lock by now
    first.commit()
    other.join(30)
    assert not other.is_alive()
    assert failures == []
    try:
        query(writer, "SET lock_timeout = '1s'")
        store.append(writer, ExpectedVersion.any(), [event("a")])
        writer.commit()
    finally:
        second.commit()
    assert [e.aggregate_id for e in store.read_events(writer, 0, 10)] == ["a"]
    writer.commit()
