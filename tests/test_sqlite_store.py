"""SQLite specifics: two connections on one file, transaction handling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from helpers import LogRecords, events
from pupsourcing import ExpectedVersion, OptimisticConcurrencyError
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.aio import AsyncProcessor, AsyncSQLiteStore
from pupsourcing.projection import Processor, ProcessorConfig


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "race.db"
    with closing(connect(path)) as conn:
        SQLiteStore().create_schema(conn)
    return path


def race(
    path: Path, rounds: int, expected: ExpectedVersion | None, wal: bool, **options: Any
) -> list[list[str]]:
    """Two threads, each with its own connection (``sqlite3.connect`` ``options``
    when given), append to the same aggregates in lockstep. Returns each
    thread's outcomes."""
    store = SQLiteStore()
    barrier = threading.Barrier(2)
    outcomes: list[list[str]] = [[], []]

    def worker(slot: int) -> None:
        if options:
            conn = sqlite3.connect(path, timeout=30, **options)
        else:
            conn = connect(path, timeout=30, wal=wal)
        try:
            for i in range(rounds):
                barrier.wait()
                try:
                    store.append(conn, expected or ExpectedVersion.no_stream(), events(2, f"r{i}"))
                    conn.commit()
                    outcomes[slot].append("won")
                except OptimisticConcurrencyError:
                    conn.rollback()
                    outcomes[slot].append("conflict")
                except Exception as exc:  # anything else fails the test below
                    conn.rollback()
                    outcomes[slot].append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_two_connections_race_for_a_new_aggregate(db_path: Path, wal: bool) -> None:
    rounds = 40
    a, b = race(db_path, rounds, ExpectedVersion.no_stream(), wal)
    for i in range(rounds):
        assert sorted([a[i], b[i]]) == ["conflict", "won"], (i, a[i], b[i])
    conn = sqlite3.connect(db_path)
    duplicates = conn.execute(
        "SELECT count(*) FROM (SELECT aggregate_id, aggregate_version FROM events "
        "GROUP BY 1, 2 HAVING count(*) > 1)"
    ).fetchone()[0]
    assert duplicates == 0
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == rounds * 2
    versions = conn.execute("SELECT DISTINCT aggregate_version FROM events ORDER BY 1").fetchall()
    assert versions == [(1,), (2,)]


def test_two_connections_appending_with_any_never_lose_or_duplicate(db_path: Path) -> None:
    store = SQLiteStore()
    errors: list[BaseException] = []

    def worker() -> None:
        conn = connect(db_path, timeout=30)
        try:
            for _ in range(60):
                store.append(conn, ExpectedVersion.any(), events(3, "shared"))
                conn.commit()
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = connect(db_path)
    stream = store.read_aggregate_stream(conn, "Shop", "Order", "shared")
    assert [e.aggregate_version for e in stream] == list(range(1, 361))


def test_stale_read_snapshot_is_a_conflict_not_a_driver_error(db_path: Path) -> None:
    store = SQLiteStore()
    writer = connect(db_path)
    reader = connect(db_path, timeout=0.2)
    store.append(writer, ExpectedVersion.no_stream(), events(1, "a"))
    writer.commit()

    reader.execute("BEGIN")
    version = store.read_aggregate_stream(reader, "Shop", "Order", "a").version
    store.append(writer, ExpectedVersion.exact(1), events(1, "a"))
    writer.commit()
    with pytest.raises(OptimisticConcurrencyError):
        store.append(reader, ExpectedVersion.exact(version), events(1, "a"))
    reader.rollback()
    assert store.read_aggregate_stream(reader, "Shop", "Order", "a").version == 2


def test_autocommit_connection_gets_a_transaction_the_caller_commits(db_path: Path) -> None:
    store = SQLiteStore()
    conn = connect(db_path)
    conn.isolation_level = None
    assert not conn.in_transaction
    store.append(conn, ExpectedVersion.any(), events(2, "a"))
    assert conn.in_transaction
    conn.rollback()
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").is_empty
    store.append(conn, ExpectedVersion.any(), events(2, "a"))
    conn.commit()
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 2


class Records:
    name = "records"

    def handle(self, e: Any, tx: Any) -> None:
        tx.execute("INSERT INTO rm (position) VALUES (?)", (e.global_position,))


class AsyncRecords(Records):
    async def handle(self, e: Any, tx: Any) -> None:  # type: ignore[override]
        await tx.execute("INSERT INTO rm (position) VALUES (?)", (e.global_position,))


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3's autocommit is Python 3.12+")
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_processor_ends_its_transactions_on_an_autocommit_true_connection(
    db_path: Path, api: str
) -> None:
    # With autocommit=True, sqlite3's commit() and rollback() do nothing: the
    # processor's batches (BEGIN IMMEDIATE ... COMMIT) must end all the same.
    setup = connect(db_path)
    SQLiteStore().create_schema(setup)
    setup.execute("CREATE TABLE rm (position INTEGER PRIMARY KEY)")
    for aggregate in ("a", "b", "c"):
        SQLiteStore().append(setup, ExpectedVersion.any(), events(2, aggregate))
    setup.commit()
    config = ProcessorConfig(batch_size=2)
    if api == "blocking":
        conn = sqlite3.connect(db_path, autocommit=True)
        with Processor(conn, SQLiteStore(), config) as processor:
            assert processor.catch_up(Records()) == 6
        assert not conn.in_transaction
        conn.close()
    else:

        async def scenario() -> bool:
            import aiosqlite

            conn = await aiosqlite.connect(db_path, autocommit=True)
            try:
                async with AsyncProcessor(conn, AsyncSQLiteStore(), config) as processor:
                    assert await processor.catch_up(AsyncRecords()) == 6
                return conn.in_transaction
            finally:
                await conn.close()

        assert asyncio.run(scenario()) is False
    other = sqlite3.connect(db_path, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # the write lock is free
    other.rollback()
    assert [r[0] for r in setup.execute("SELECT position FROM rm")] == [1, 2, 3, 4, 5, 6]
    assert SQLiteStore().get_checkpoint(setup, "records") == 6


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3's autocommit is Python 3.12+")
def test_appends_on_autocommit_false_connections_wait_for_the_lock_or_conflict(
    db_path: Path,
) -> None:
    # sqlite3 keeps a deferred transaction open on such a connection: the
    # append joins it, and its first statement, a write, waits for the lock.
    rounds = 40
    a, b = race(db_path, rounds, ExpectedVersion.no_stream(), True, autocommit=False)
    for i in range(rounds):
        assert sorted([a[i], b[i]]) == ["conflict", "won"], (i, a[i], b[i])
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == rounds * 2


class Appender(threading.Thread):
    """Appends ``appends`` single events on its own ``autocommit=False``
    connection, holding the write lock ``hold`` seconds each time; keeps
    the error that stopped it."""

    def __init__(self, path: Path, slot: int, appends: int, hold: float) -> None:
        super().__init__()
        self.path, self.slot, self.appends, self.hold = path, slot, appends, hold
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, autocommit=False)
        try:
            for _ in range(self.appends):
                SQLiteStore().append(conn, ExpectedVersion.any(), events(1, f"w{self.slot}"))
                time.sleep(self.hold)
                conn.commit()
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


def appending(path: Path, writers: int, appends: int, hold: float) -> list[Appender]:
    threads = [Appender(path, slot, appends, hold) for slot in range(writers)]
    for t in threads:
        t.start()
    return threads


def joined(threads: list[Appender]) -> list[str]:
    """The errors of ``threads``, once they are done."""
    for t in threads:
        t.join()
    return [repr(t.error) for t in threads if t.error is not None]


class RecordsAll(Records):
    name = "records_all"


class AsyncRecordsAll(AsyncRecords):
    name = "records_all"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3's autocommit is Python 3.12+")
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_processor_on_an_autocommit_false_connection_waits_for_the_write_lock(
    db_path: Path, api: str
) -> None:
    """sqlite3 keeps a deferred transaction open on such a connection, in
    which the processor reads its events: a batch there could not wait for
    the write lock (SQLite refuses a transaction that has read at once) and
    was retried with a warning while other connections appended."""
    setup = connect(db_path)
    setup.execute("CREATE TABLE rm (position INTEGER)")
    setup.commit()
    log = LogRecords(f"pupsourcing.test.autocommit_false.{api}")
    config = ProcessorConfig(batch_size=5, logger=log.logger)
    writers = appending(db_path, writers=3, appends=30, hold=0.003)
    if api == "blocking":
        conn = sqlite3.connect(db_path, timeout=30, autocommit=False)
        with Processor(conn, SQLiteStore(), config) as processor:
            while any(t.is_alive() for t in writers):
                processor.catch_up(RecordsAll())
            errors = joined(writers)
            processor.catch_up(RecordsAll())
        in_transaction = conn.in_transaction
        conn.close()
    else:

        async def scenario() -> tuple[list[str], bool]:
            import aiosqlite

            conn = await aiosqlite.connect(db_path, timeout=30, autocommit=False)
            try:
                async with AsyncProcessor(conn, AsyncSQLiteStore(), config) as processor:
                    while any(t.is_alive() for t in writers):
                        await processor.catch_up(AsyncRecordsAll())
                    errors = joined(writers)
                    await processor.catch_up(AsyncRecordsAll())
                return errors, conn.in_transaction
            finally:
                await conn.close()

        errors, in_transaction = asyncio.run(scenario())
    assert errors == []
    assert log.messages(logging.WARNING) == []
    assert in_transaction  # as autocommit=False promises
    other = sqlite3.connect(db_path, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # the write lock is free
    other.rollback()
    positions = [r[0] for r in setup.execute("SELECT position FROM rm ORDER BY position")]
    assert positions == list(range(1, 91))
    assert SQLiteStore().get_checkpoint(setup, "records_all") == 90


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3's autocommit is Python 3.12+")
@pytest.mark.parametrize("start", ["first", "later"])
def test_a_processor_on_an_autocommit_false_connection_waits_for_a_writer(
    db_path: Path, start: str
) -> None:
    """Another connection holds the write lock for a moment while the
    processor reads (its partition layout at the first start, its events
    later) in the transaction sqlite3 keeps open: the write that follows
    (the layout's record, the batch) waits for the lock instead of failing
    at once with a warning."""
    store = SQLiteStore()
    setup = connect(db_path)
    setup.execute("CREATE TABLE rm (position INTEGER)")
    store.append(setup, ExpectedVersion.any(), events(3, "a"))
    setup.commit()
    log = LogRecords(f"pupsourcing.test.autocommit_false.{start}")
    conn = sqlite3.connect(db_path, timeout=10, autocommit=False)
    with Processor(conn, store, ProcessorConfig(logger=log.logger)) as processor:
        if start == "later":
            assert processor.catch_up(RecordsAll()) == 3
            store.append(setup, ExpectedVersion.any(), events(3, "a"))
            setup.commit()
        holder = sqlite3.connect(db_path, check_same_thread=False)  # released by a timer thread
        holder.execute("BEGIN IMMEDIATE")
        released = threading.Timer(0.3, holder.rollback)
        released.start()
        try:
            assert processor.catch_up(RecordsAll()) == 3
        finally:
            released.join()
    assert log.messages(logging.WARNING) == []
    assert conn.in_transaction
    expected = [1, 2, 3] if start == "first" else [1, 2, 3, 4, 5, 6]
    assert [r[0] for r in setup.execute("SELECT position FROM rm ORDER BY 1")] == expected


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3's autocommit is Python 3.12+")
@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_batch_that_cannot_take_the_lock_keeps_sqlite3s_transaction_open(
    db_path: Path, api: str
) -> None:
    """A batch ends sqlite3's own transaction to take the lock; when it
    cannot take it within the busy timeout, sqlite3's transaction is open
    again, as ``autocommit=False`` promises (``rollback()`` would fail on a
    connection with none, and writes would commit one by one)."""
    holder = connect(db_path)
    holder.execute("BEGIN IMMEDIATE")
    if api == "blocking":
        conn = sqlite3.connect(db_path, timeout=0.05, autocommit=False)
        store = SQLiteStore()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store._run(conn, store.dialect.begin_batch(False))
        in_transaction = conn.in_transaction
        conn.rollback()
        conn.close()
    else:

        async def scenario() -> bool:
            import aiosqlite

            conn = await aiosqlite.connect(db_path, timeout=0.05, autocommit=False)
            store = AsyncSQLiteStore()
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    await store._run(conn, store.dialect.begin_batch(False))
                in_transaction = conn.in_transaction
                await conn.rollback()
                return in_transaction
            finally:
                await conn.close()

        in_transaction = asyncio.run(scenario())
    holder.rollback()
    assert in_transaction


def test_append_joins_an_open_transaction(db_path: Path) -> None:
    store = SQLiteStore()
    conn = connect(db_path)
    conn.execute("CREATE TABLE notes (note TEXT)")
    conn.commit()
    conn.execute("INSERT INTO notes VALUES ('first')")
    assert conn.in_transaction
    store.append(conn, ExpectedVersion.any(), events(1, "a"))
    store.append(conn, ExpectedVersion.exact(1), events(1, "a"))
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").is_empty


def test_failed_append_keeps_the_callers_earlier_writes(db_path: Path) -> None:
    store = SQLiteStore()
    conn = connect(db_path)
    conn.execute("CREATE TABLE notes (note TEXT)")
    conn.commit()
    conn.execute("INSERT INTO notes VALUES ('kept')")
    stored = store.append(conn, ExpectedVersion.any(), events(1, "a"))
    dup = events(1, "b")[0]
    dup = type(dup)(
        *(
            getattr(dup, f)
            for f in ("bounded_context", "aggregate_type", "aggregate_id", "event_type", "payload")
        ),
        event_id=stored.events[0].event_id,
    )
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.any(), [dup])
    conn.commit()
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 1
    assert store.read_aggregate_stream(conn, "Shop", "Order", "b").is_empty
    assert (
        conn.execute("SELECT count(*) FROM aggregate_heads WHERE aggregate_id = 'b'").fetchone()[0]
        == 0
    )


def test_a_failed_append_that_opened_the_transaction_rolls_it_back(db_path: Path) -> None:
    """The transaction held nothing else: it ends, with the write lock, and
    nothing of the append stays (the head claimed before the failing insert
    included)."""
    store = SQLiteStore()
    conn = connect(db_path)
    stored = store.append(conn, ExpectedVersion.no_stream(), events(1, "a"))
    conn.commit()
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.no_stream(), events(1, "a"))
    assert not conn.in_transaction
    dup = dataclasses.replace(events(1, "b")[0], event_id=stored.events[0].event_id)
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.any(), [dup])  # the head of b moved first
    assert not conn.in_transaction
    other = connect(db_path, timeout=0.1)  # the write lock is free
    store.append(other, ExpectedVersion.exact(1), events(1, "a"))
    other.commit()
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 2
    assert store.read_aggregate_stream(conn, "Shop", "Order", "b").is_empty
    heads = conn.execute("SELECT count(*) FROM aggregate_heads WHERE aggregate_id = 'b'")
    assert heads.fetchone()[0] == 0


def test_lock_timeout_surfaces_as_the_drivers_error(db_path: Path) -> None:
    store = SQLiteStore()
    holder = connect(db_path)
    holder.execute("BEGIN IMMEDIATE")
    waiter = connect(db_path, timeout=0.1)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.append(waiter, ExpectedVersion.any(), events(1, "a"))
    holder.rollback()


def test_processor_waits_out_a_writer_holding_the_lock(db_path: Path) -> None:
    """The processor's batch needs the write lock; a writer holding it longer
    than the busy timeout is a retry, not a crash."""
    import logging

    from pupsourcing.projection import Processor, ProcessorConfig

    store = SQLiteStore()
    writer = connect(db_path)
    store.append(writer, ExpectedVersion.any(), events(2, "a"))
    writer.commit()
    holder = sqlite3.connect(db_path, check_same_thread=False)  # released by a timer thread
    holder.execute("BEGIN IMMEDIATE")

    class Seen:
        name = "seen"

        def __init__(self) -> None:
            self.positions: list[int] = []

        def handle(self, event: object, tx: object) -> None:
            self.positions.append(event.global_position)  # type: ignore[attr-defined]

    records: list[logging.LogRecord] = []
    logger = logging.getLogger("pupsourcing.test.busy")
    logger.addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r)})())
    projection = Seen()
    processor = Processor(
        lambda: connect(db_path, timeout=0.05), store, ProcessorConfig(logger=logger)
    )
    released = threading.Timer(0.4, holder.rollback)
    released.start()
    try:
        assert processor.catch_up(projection) == 2
    finally:
        released.join()
        processor.close()
    assert projection.positions == [1, 2]
    assert any("retrying" in r.getMessage() for r in records if r.levelno == logging.WARNING)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-28 15:01:58.123456", datetime(2026, 11, 28, 15, 1, 58, 123456, tzinfo=UTC)),
        ("2026-11-28 15:01:58", datetime(2026, 11, 28, 15, 1, 58, tzinfo=UTC)),
        ("2026-11-28T15:01:58Z", datetime(2026, 11, 28, 15, 1, 58, tzinfo=UTC)),
        ("2026-11-28 15:01:58+01:00", datetime(2026, 11, 28, 14, 1, 58, tzinfo=UTC)),
        ("2026-11-28 10:01:58.5-05:00", datetime(2026, 11, 28, 15, 1, 58, 500000, tzinfo=UTC)),
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
    ],
)
def test_created_at_text_reads_back_as_utc(db_path: Path, stored: str, expected: datetime) -> None:
    # What we write has no offset and is UTC; text written by other tools may
    # carry one. Either way the event's created_at is the same instant, in UTC.
    store = SQLiteStore()
    with closing(connect(db_path)) as conn:
        store.append(conn, ExpectedVersion.any(), events(1, "t"))
        conn.execute("UPDATE events SET created_at = ?", (stored,))
        [event] = store.read_events(conn, 0, 10)
    assert event.created_at == expected
    assert event.created_at.utcoffset() == timedelta(0)


def test_event_ids_and_payloads_written_by_other_tools_read_back(db_path: Path) -> None:
    # Another writer may store the id in another form uuid.UUID accepts, or
    # the payload as TEXT: the events read back are the same.
    store = SQLiteStore()
    with closing(connect(db_path)) as conn:
        [appended] = store.append(conn, ExpectedVersion.any(), events(1, "t")).events
        conn.execute(
            "UPDATE events SET event_id = ?, payload = CAST(payload AS TEXT)",
            (appended.event_id.hex.upper(),),
        )
        assert conn.execute("SELECT typeof(payload) FROM events").fetchone() == ("text",)
        [read] = store.read_events(conn, 0, 10)
        [streamed] = store.read_aggregate_stream(conn, "Shop", "Order", "t").events
    assert read == streamed == appended
    assert type(read.payload) is bytes


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 11, 28, 15, 1, 58, 123456, tzinfo=UTC),
        datetime(2026, 11, 28, 16, 1, 58, 123456, tzinfo=timezone(timedelta(hours=1))),
        datetime(987, 1, 2, 15, 1, 58, tzinfo=UTC),
    ],
)
def test_created_at_is_stored_as_utc_text(db_path: Path, created_at: datetime) -> None:
    store = SQLiteStore()
    with closing(connect(db_path)) as conn:
        store.append(conn, ExpectedVersion.any(), events(1, "t", created_at=created_at))
        [(text,)] = conn.execute("SELECT created_at FROM events").fetchall()
        [event] = store.read_events(conn, 0, 10)
    utc = created_at.astimezone(UTC)
    assert text == utc.replace(tzinfo=None).isoformat(" ", "microseconds")
    assert event.created_at == utc


@pytest.mark.parametrize("count", [1, 63, 64, 65, 128, 130])
def test_reads_decode_every_row_whatever_the_count(db_path: Path, count: int) -> None:
    """The blocking store fetches and decodes rows 64 at a time."""
    store = SQLiteStore()
    conn = connect(db_path)
    store.create_schema(conn)
    store.append(conn, ExpectedVersion.any(), events(count, "a"))
    store.append(conn, ExpectedVersion.any(), events(3, "b"))
    conn.commit()
    stream = store.read_aggregate_stream(conn, "Shop", "Order", "a")
    assert [e.aggregate_version for e in stream.events] == list(range(1, count + 1))
    read = store.read_events(conn, 0, count + 10)
    assert [e.global_position for e in read] == list(range(1, count + 4))
    assert [e.aggregate_id for e in read] == ["a"] * count + ["b"] * 3
    conn.close()


@pytest.mark.parametrize("interrupt", ["timeout", "cancel"])
def test_an_append_interrupted_while_waiting_for_the_lock_does_not_take_it_later(
    db_path: Path, interrupt: str
) -> None:
    """aiosqlite runs the ``BEGIN IMMEDIATE`` it was sent even after the
    awaiting task gave up: once the other writer lets go, the interrupted
    append must not be left holding the write lock on the caller's
    connection (every other connection would then be locked out)."""
    from pupsourcing.adapters.sqlite import connect_async

    async def scenario() -> tuple[bool, str]:
        conn = await connect_async(db_path, timeout=1.0)
        holder = connect(db_path)
        holder.execute("BEGIN IMMEDIATE")
        try:
            append = AsyncSQLiteStore().append(conn, ExpectedVersion.any(), events(1, "a"))
            if interrupt == "timeout":
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await append
            else:
                task = asyncio.ensure_future(append)
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            holder.rollback()  # the BEGIN IMMEDIATE sent for the append now succeeds
            await asyncio.sleep(0.3)
            await conn.execute("SELECT 1")  # (after whatever the append left queued)
            other = connect(db_path, timeout=0.2)
            try:
                SQLiteStore().append(other, ExpectedVersion.any(), events(1, "b"))
                other.commit()
                outcome = "appended"
            except sqlite3.OperationalError as exc:
                outcome = str(exc)
            finally:
                other.close()
            return conn.in_transaction, outcome
        finally:
            holder.close()
            await conn.close()

    in_transaction, outcome = asyncio.run(scenario())
    assert outcome == "appended"
    assert not in_transaction
    with closing(sqlite3.connect(db_path)) as check:
        assert check.execute("SELECT aggregate_id FROM events").fetchall() == [("b",)]
