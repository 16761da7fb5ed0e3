"""Cancellation sweeps of the asyncio API: each operation is cancelled at its
first statement, then at its second, and so on until it completes, on real
PostgreSQL, MariaDB and SQLite. After every cancellation the
:class:`asyncio.CancelledError` has reached the caller, the caller's
connection is as the docs say (usable, or in a transaction to roll back, or
closed by asyncmy), nothing partial became visible and no lock blocks
another connection.

A statement is cancelled in one of two ways: ``"before"`` it is sent (the
cancellation lands on an await ahead of it), or ``"sent"``: the task is
cancelled as the driver sends it, so the cancellation reaches the driver
while it waits for the reply (psycopg then cancels the query on the server,
asyncmy closes the connection, aiosqlite runs the statement anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aio_facade import maybe_await
from conftest import ASYNC_DRIVERS, Backend, made_backend, require
from helpers import events
from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.aio import AsyncProcessor
from pupsourcing.projection import ProcessorConfig
from pupsourcing.store.plan import Statement
from test_aio import execute, insert_sql
from test_projection import append_many, create_read_model

MODES = ["before", "sent"]
MAX_STATEMENTS = 80
OPENED: list[Any] = []
"""The connections :func:`opener` opened (closed after each check)."""


@pytest.fixture(params=list(ASYNC_DRIVERS))
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    require(ASYNC_DRIVERS[request.param])
    with made_backend(request.param, tmp_path) as b:
        yield b


class Sweep:
    """Wraps a store's statement execution to cancel the running task at
    its ``at``-th statement (counted from when it is armed)."""

    def __init__(self, store: Any, mode: str) -> None:
        self.mode = mode
        self.at = 0
        self.made = 0
        self.target: asyncio.Task[Any] | None = None
        """The task to cancel (``"sent"``); the one running the statement when None."""
        original = store._execute

        async def execute_cancelled(tx: Any, statement: Statement) -> Any:
            if statement.begin and await store._in_transaction(tx):
                return await original(tx, statement)  # answered without the driver
            self.made += 1
            if self.made == self.at:
                if self.mode == "before":
                    raise asyncio.CancelledError
                task = self.target or asyncio.current_task()
                assert task is not None
                task.cancel()
            return await original(tx, statement)

        store._execute = execute_cancelled

    def arm(self, at: int) -> None:
        """Count statements from now on; cancel the ``at``-th."""
        self.at, self.made = at, 0

    def disarm(self) -> bool:
        """Whether the statement to cancel was reached."""
        reached = self.at > 0 and self.made >= self.at
        self.at = 0
        return reached


@contextlib.asynccontextmanager
async def opener(db: Backend) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Opens asyncio connections to ``db`` whose lock waits end after a
    second (a lock left behind fails the test instead of hanging it); all
    closed on exit."""
    opened = OPENED

    async def open_connection() -> Any:
        conn = await db.open_async()
        opened.append(conn)
        if db.name == "postgres":
            await execute(conn, "SET lock_timeout = '1s'")
        elif db.name == "mysql":
            await execute(conn, "SET SESSION innodb_lock_wait_timeout = 1")
        else:
            await execute(conn, "PRAGMA busy_timeout = 1000")
        await conn.commit()
        return conn

    try:
        yield open_connection
    finally:
        await close_all(opened)


async def close_all(opened: list[Any]) -> None:
    while opened:
        with contextlib.suppress(Exception):
            await maybe_await(opened.pop().close())


async def set_autocommit(db: Backend, conn: Any) -> None:
    if db.name == "postgres":
        await conn.set_autocommit(True)
    elif db.name == "mysql":
        await conn.autocommit(True)
    else:
        conn.isolation_level = None


def closed(db: Backend, conn: Any) -> bool:
    """Whether the driver closed ``conn`` (asyncmy does, cancelled midway
    through a reply)."""
    if db.name == "mysql":
        return not conn.connected
    return bool(getattr(conn, "closed", False))


def consistent(db: Backend) -> dict[str, int]:
    """Every aggregate's committed version, checked against its events: no
    event without its head, no head ahead of its events."""
    config = db.store.config
    heads = {
        row[0]: int(row[1])
        for row in _rows(
            db,
            f"SELECT aggregate_id, aggregate_version FROM {config.aggregate_heads_table}",
        )
    }
    stored = {
        row[0]: (int(row[1]), int(row[2]))
        for row in _rows(
            db,
            f"SELECT aggregate_id, count(*), max(aggregate_version) "
            f"FROM {config.events_table} GROUP BY aggregate_id",
        )
    }
    assert {key: (version, version) for key, version in heads.items()} == stored
    return heads


def _rows(db: Backend, sql: str) -> list[Any]:
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        conn.close()


async def in_failed_transaction(db: Backend, conn: Any) -> bool:
    """Whether ``conn`` is in a transaction the server aborted (PostgreSQL:
    every statement fails until it is rolled back)."""
    if db.name != "postgres":
        return False
    from psycopg.pq import TransactionStatus

    return conn.info.transaction_status == TransactionStatus.INERROR


async def appends_from_another_connection(
    db: Backend, connect: Any, aggregate_id: str, *, commit: bool = True
) -> None:
    """An append to ``aggregate_id`` on a fresh connection (committed, or
    rolled back): it fails (lock time-out) if the cancelled operation left
    a lock behind."""
    other = await connect()
    store = db.async_store()
    await store.append(other, ExpectedVersion.any(), events(1, aggregate_id))
    await (other.commit() if commit else other.rollback())


async def sweep(
    operation: Callable[[int], Awaitable[Any]],
    check: Callable[[int], Awaitable[None]],
    reached: Callable[[], bool],
) -> int:
    """Run ``operation(at)``, which arms a :class:`Sweep` to cancel its
    ``at``-th statement, for at = 1, 2, ..., and ``check(at)`` after each,
    until it completes (``reached()`` is false); the statements it made."""
    for at in range(1, MAX_STATEMENTS):
        task = asyncio.create_task(operation(at))
        await asyncio.wait([task])
        if not reached():
            await task  # completed before its `at`-th statement
            return at - 1
        assert task.cancelled(), f"statement {at}: {task.exception()!r} instead of cancelled"
        await check(at)
        await close_all(OPENED)
    raise AssertionError(f"still cancelled at statement {MAX_STATEMENTS}")


# -- the stores ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_append_in_the_callers_transaction_cancelled_anywhere(db: Backend, mode: str) -> None:
    """Cancelled anywhere inside the caller's transaction, an append leaves
    on PostgreSQL the transaction aborted (to roll back: nothing of it can
    commit); on MySQL and SQLite the caller's earlier writes to commit and
    none of the append's events (asyncmy: or the connection closed, the
    server having rolled back). Only SQLite cancelled at the append's last
    statement, its ``RELEASE`` (which aiosqlite runs anyway), has the
    append complete in the transaction."""

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        async with opener(db) as connect:
            conn: Any = None
            kept: dict[str, int] = {}
            stayed: list[int] = []

            async def operation(at: int) -> None:
                nonlocal conn
                conn = await connect()
                await store.append(conn, ExpectedVersion.no_stream(), events(1, f"mine-{at}"))
                sweeper.arm(at)
                await store.append(conn, ExpectedVersion.no_stream(), events(2, f"cut-{at}"))

            async def check(at: int) -> None:
                if db.name == "postgres":
                    assert await in_failed_transaction(db, conn), f"statement {at}"
                    await conn.rollback()
                elif not closed(db, conn):
                    stream = await store.read_aggregate_stream(conn, "Shop", "Order", f"cut-{at}")
                    assert stream.version in (0, 2), f"statement {at}"
                    if stream.version:
                        stayed.append(at)
                        kept[f"cut-{at}"] = 2
                    await conn.commit()
                    kept[f"mine-{at}"] = 1
                    assert await execute(conn, "SELECT 1") == [(1,)]
                assert consistent(db) == kept
                await appends_from_another_connection(db, connect, f"cut-{at}")
                kept[f"cut-{at}"] = kept.get(f"cut-{at}", 0) + 1

            made = await sweep(operation, check, sweeper.disarm)
            assert made >= 1
            assert stayed == ([made] if db.name == "sqlite" and mode == "sent" else [])

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", MODES)
def test_append_on_an_autocommit_connection_cancelled_anywhere(db: Backend, mode: str) -> None:
    """Cancelled anywhere, an append on a connection in autocommit mode
    stored all of its events or none, and left no transaction open."""

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        async with opener(db) as connect:
            conn: Any = None

            async def operation(at: int) -> None:
                nonlocal conn
                conn = await connect()
                await set_autocommit(db, conn)
                sweeper.arm(at)
                await store.append(conn, ExpectedVersion.no_stream(), events(2, f"cut-{at}"))

            async def check(at: int) -> None:
                if not closed(db, conn):
                    assert not await store._in_transaction(conn), f"statement {at}"
                    assert await execute(conn, "SELECT 1") == [(1,)]
                assert consistent(db).get(f"cut-{at}", 0) in (0, 2)
                await appends_from_another_connection(db, connect, f"cut-{at}")

            made = await sweep(operation, check, sweeper.disarm)
            assert made >= 1

    asyncio.run(scenario())


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
@pytest.mark.parametrize("mode", MODES)
def test_reads_cancelled_anywhere(db: Backend, mode: str, autocommit: bool) -> None:
    """A cancelled read leaves the connection usable (after a rollback where
    the server aborted the transaction, or closed by asyncmy)."""
    conn0 = db.connection()
    db.store.append(conn0, ExpectedVersion.any(), events(3, "a"))
    conn0.commit()

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        async with opener(db) as connect:
            conn: Any = None
            reads = [
                lambda: store.read_events(conn, 0, 10),
                lambda: store.read_aggregate_stream(conn, "Shop", "Order", "a"),
            ]
            for read in reads:

                async def operation(at: int, read: Any = read) -> None:
                    nonlocal conn
                    conn = await connect()
                    if autocommit:
                        await set_autocommit(db, conn)
                    sweeper.arm(at)
                    await read()

                async def check(at: int) -> None:
                    if closed(db, conn):
                        return
                    if await in_failed_transaction(db, conn):
                        await conn.rollback()
                    assert await execute(conn, "SELECT 1") == [(1,)]
                    await conn.rollback()

                assert await sweep(operation, check, sweeper.disarm) >= 1

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", MODES)
def test_create_schema_cancelled_anywhere_can_be_run_again(db: Backend, mode: str) -> None:
    """A ``create_schema`` cancelled at any statement leaves a database on
    which it runs again, after which the store works."""
    from pupsourcing.store.config import StoreConfig

    async def scenario() -> None:
        store0 = db.async_store()
        sweeper_store: list[Any] = []
        async with opener(db) as connect:
            conn: Any = None
            store: Any = None

            async def operation(at: int) -> None:
                nonlocal conn, store
                prefix = f"s{at}_"
                config = StoreConfig(
                    events_table=prefix + "events",
                    aggregate_heads_table=prefix + "heads",
                    checkpoints_table=prefix + "checkpoints",
                )
                store = type(store0)(config)
                sweeper = Sweep(store, mode)
                sweeper_store[:] = [sweeper]
                conn = await connect()
                sweeper.arm(at)
                await store.create_schema(conn)
                await conn.commit()

            async def check(at: int) -> None:
                if not closed(db, conn):
                    if await in_failed_transaction(db, conn):
                        await conn.rollback()
                    assert await execute(conn, "SELECT 1") == [(1,)]
                    await conn.rollback()
                fresh = await connect()
                await store.create_schema(fresh)
                await fresh.commit()
                await store.append(fresh, ExpectedVersion.no_stream(), events(2, "x"))
                await fresh.commit()
                assert (await store.read_aggregate_stream(fresh, "Shop", "Order", "x")).version == 2
                await fresh.rollback()

            def reached() -> bool:
                return bool(sweeper_store[0].disarm())

            assert await sweep(operation, check, reached) >= 1

    asyncio.run(scenario())


# -- projections -----------------------------------------------------------------


class Recorded:
    """A projection writing one row per event to the read model ``name``
    through ``tx``; it sets ``stop`` once it has seen every event in
    ``until``."""

    def __init__(self, db: Backend, name: str = "swept", until: list[int] | None = None) -> None:
        self.name = name
        self.sql = insert_sql(db).replace(" rm ", f" {name} ")
        self.until = set(until or ())
        self.stop = asyncio.Event()

    async def handle(self, event: PersistedEvent, tx: Any) -> None:
        await execute(tx, self.sql, (event.global_position, event.aggregate_id))
        self.until.discard(event.global_position)
        if not self.until:
            self.stop.set()


def projected(db: Backend, name: str) -> tuple[list[int], int]:
    """The read model's positions, and the projection's checkpoint."""
    rows, checkpoints = read_model_and_checkpoints(db, name)
    return rows, checkpoints.get(name, 0)


def read_model_and_checkpoints(db: Backend, table: str) -> tuple[list[int], dict[str, int]]:
    """The read model ``table``'s positions and every checkpoint, read by one
    statement: one snapshot, even while a server still finishes a
    transaction whose connection a cancellation closed (asyncmy)."""
    sql = (
        "SELECT '', position FROM " + table + " UNION ALL "
        "SELECT projection_name, last_global_position FROM " + db.store.config.checkpoints_table
    )
    found = _rows(db, sql)
    rows = sorted(int(position) for name, position in found if name == "")
    return rows, {name: int(position) for name, position in found if name != ""}


@pytest.mark.parametrize("method", ["catch_up", "run"])
@pytest.mark.parametrize("own_connection", [True, False], ids=["factory", "callers"])
@pytest.mark.parametrize("mode", MODES)
def test_processor_cancelled_anywhere(
    db: Backend, mode: str, own_connection: bool, method: str
) -> None:
    """Cancelled at any statement, ``catch_up`` or ``run`` leaves the read model and
    the checkpoint agreeing (every row written up to the checkpoint, none
    after it), the caller's connection usable and out of any transaction,
    and no lock held: an append and a fresh processor then finish the job,
    each event applied once."""
    create_read_model(db, "swept")
    append_many(db, aggregates=2, per_aggregate=2)

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        config = ProcessorConfig(batch_size=2, poll_interval=0.05)
        async with opener(db) as connect:
            conn: Any = None

            async def operation(at: int) -> None:
                nonlocal conn
                conn = None if own_connection else await connect()
                projection = Recorded(db, until=committed(db))
                async with AsyncProcessor(conn or connect, store, config) as processor:
                    sweeper.arm(at)
                    if method == "run":
                        await processor.run(projection, stop=projection.stop)
                    else:
                        await processor.catch_up(projection)

            async def check(at: int) -> None:
                rows, checkpoint = projected(db, "swept")
                assert rows == [p for p in committed(db) if p <= checkpoint], f"statement {at}"
                if conn is not None and not closed(db, conn):
                    assert not await _open_transaction(db, conn), f"statement {at}"
                    assert await execute(conn, "SELECT 1") == [(1,)]
                    await conn.rollback()
                await appends_from_another_connection(db, connect, "agg-0", commit=False)
                async with AsyncProcessor(await connect(), db.async_store(), config) as fresh:
                    await fresh.catch_up(Recorded(db))  # a row written twice: ProjectionError
                assert projected(db, "swept") == (committed(db), committed(db)[-1])
                reset(db, "swept")

            assert await sweep(operation, check, sweeper.disarm) > 4

    asyncio.run(scenario())


def committed(db: Backend) -> list[int]:
    """The positions of the committed events."""
    sql = f"SELECT global_position FROM {db.store.config.events_table} ORDER BY 1"
    return [int(row[0]) for row in _rows(db, sql)]


def reset(db: Backend, name: str) -> None:
    """Empty the read model and move the projection back to the start."""
    conn = db.connect()
    try:
        conn.cursor().execute(f"DELETE FROM {name}")
        db.store.update_checkpoint(conn, name, 0)
        conn.commit()
    finally:
        conn.close()


async def _open_transaction(db: Backend, conn: Any) -> bool:
    """Whether ``conn`` has a transaction open (not merely one its next
    statement would open)."""
    if db.name == "postgres":
        return bool(conn.info.transaction_status != 0)
    if db.name == "mysql":
        from pupsourcing.adapters.mysql._dialect import _SERVER_STATUS_IN_TRANS

        return bool(conn.server_status & _SERVER_STATUS_IN_TRANS)
    return bool(conn.in_transaction)


@pytest.mark.parametrize("mode", MODES)
def test_async_runner_cancelled_anywhere(db: Backend, mode: str) -> None:
    """Cancelled as any statement of either projection is under way,
    :class:`AsyncRunner` raises :class:`asyncio.CancelledError` once both
    projections rolled back their batch: each read model agrees with its
    checkpoint, every connection is closed and no lock is left."""
    from pupsourcing.aio import AsyncRunner, ProjectionRunner

    names = ["swept_a", "swept_b"]
    for name in names:
        create_read_model(db, name)
    append_many(db, aggregates=2, per_aggregate=2)

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        config = ProcessorConfig(batch_size=2, poll_interval=0.05)
        async with opener(db) as connect:
            processors: list[AsyncProcessor[Any]] = []

            async def operation(at: int) -> None:
                stop = asyncio.Event()
                projections = [Recorded(db, name, until=committed(db)) for name in names]
                processors[:] = [AsyncProcessor(connect, store, config) for _ in names]
                runners = [
                    ProjectionRunner(p, c) for p, c in zip(projections, processors, strict=True)
                ]
                sweeper.target = asyncio.current_task()
                sweeper.arm(at)

                async def all_seen() -> None:
                    for projection in projections:
                        await projection.stop.wait()
                    stop.set()

                watch = asyncio.create_task(all_seen())
                try:
                    await AsyncRunner().run(runners, stop=stop)
                finally:
                    watch.cancel()
                    for processor in processors:
                        await processor.close()

            async def check(at: int) -> None:
                assert [p._conn for p in processors] == [None, None], f"statement {at}"
                for name in names:
                    rows, checkpoint = projected(db, name)
                    assert rows == [p for p in committed(db) if p <= checkpoint], (at, name)
                await appends_from_another_connection(db, connect, "agg-0", commit=False)
                for name in names:
                    reset(db, name)

            assert await sweep(operation, check, sweeper.disarm) > 4

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", MODES)
def test_async_claiming_runner_cancelled_anywhere(db: Backend, mode: str) -> None:
    """Cancelled as any of its statements (leases, or a partition's batch)
    is under way, :class:`AsyncClaimingRunner` raises
    :class:`asyncio.CancelledError` having released every lease it held,
    its member row too, and each partition's read model agrees with its
    checkpoint."""
    from pupsourcing.aio import AsyncClaimingRunner

    create_read_model(db, "swept")
    append_many(db, aggregates=4, per_aggregate=1)
    names = ["swept_p0", "swept_p1"]

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        config = ProcessorConfig(batch_size=2, poll_interval=0.05, total_partitions=2)
        async with opener(db) as connect:

            async def operation(at: int) -> None:
                projection = Recorded(db, until=committed(db))
                runner = AsyncClaimingRunner(connect, store, config, lease_ttl=30, owner="me")
                sweeper.target = asyncio.current_task()
                sweeper.arm(at)
                await runner.run(projection, stop=projection.stop)

            async def check(at: int) -> None:
                conn = db.connect()
                try:
                    held = [lease for lease in db.store.list_leases(conn) if lease.owner]
                finally:
                    conn.close()
                assert held == [], f"statement {at}"
                rows, checkpoints = read_model_and_checkpoints(db, "swept")
                assert rows == [  # each partition's events up to its checkpoint
                    position
                    for position, aggregate_id in _rows(db, EVENT_KEYS_SQL)
                    if position <= checkpoints.get(names[partition_of(aggregate_id)], 0)
                ], f"statement {at}"
                await appends_from_another_connection(db, connect, "agg-0", commit=False)
                reset(db, "swept")
                for name in names:
                    reset_checkpoint(db, name)

            assert await sweep(operation, check, sweeper.disarm) > 4

    asyncio.run(scenario())


EVENT_KEYS_SQL = "SELECT global_position, aggregate_id FROM events ORDER BY 1"


def partition_of(aggregate_id: str) -> int:
    from pupsourcing.core.hashing import partition_hash

    return partition_hash(aggregate_id) % 2


def reset_checkpoint(db: Backend, name: str) -> None:
    conn = db.connect()
    try:
        db.store.update_checkpoint(conn, name, 0)
        conn.commit()
    finally:
        conn.close()


# -- the domain layer ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_repository_save_and_load_cancelled_anywhere(db: Backend, mode: str) -> None:
    """A cancelled ``save`` (an append and a snapshot) keeps the aggregate's
    pending events: once the caller rolls back, saving again stores them
    once; a cancelled ``load`` leaves the connection usable."""
    from domain_model import Order, codec
    from pupsourcing.aio import AsyncRepository

    async def scenario() -> None:
        store = db.async_store()
        sweeper = Sweep(store, mode)
        repository = AsyncRepository(store, Order, codec(), snapshot_every=2)
        async with opener(db) as connect:
            conn: Any = None
            order: Any = None

            async def save(at: int) -> None:
                nonlocal conn, order
                conn = await connect()
                order = Order(f"order-{at}")
                order.place("ada")
                order.add("pen", "1.50")
                sweeper.arm(at)
                await repository.save(conn, order)
                await conn.commit()

            async def saved_again(at: int) -> None:
                if not closed(db, conn):
                    await conn.rollback()
                assert len(order.pending_events) == 2, f"statement {at}"
                again = await connect()
                await repository.save(again, order)
                await again.commit()
                assert (await repository.load(again, f"order-{at}")).version == 2
                await again.rollback()
                assert consistent(db)[f"order-{at}"] == 2

            assert await sweep(save, saved_again, sweeper.disarm) >= 2

            async def load(at: int) -> None:
                nonlocal conn
                conn = await connect()
                sweeper.arm(at)
                assert (await repository.load(conn, "order-1")).version == 2

            async def usable(at: int) -> None:
                if closed(db, conn):
                    return
                await conn.rollback()
                assert await execute(conn, "SELECT 1") == [(1,)]

            assert await sweep(load, usable, sweeper.disarm) >= 2

    asyncio.run(scenario())
