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
from pupsourcing import ExpectedVersion
from pupsourcing.store.plan import Statement
from test_aio import execute

MODES = ["before", "sent"]
MAX_STATEMENTS = 40


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
        original = store._execute

        async def execute_cancelled(tx: Any, statement: Statement) -> Any:
            if statement.begin and await store._in_transaction(tx):
                return await original(tx, statement)  # answered without the driver
            self.made += 1
            if self.made == self.at:
                if self.mode == "before":
                    raise asyncio.CancelledError
                task = asyncio.current_task()
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
    opened: list[Any] = []

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
        for conn in opened:
            with contextlib.suppress(Exception):
                await maybe_await(conn.close())


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


async def appends_from_another_connection(db: Backend, connect: Any, aggregate_id: str) -> None:
    """An append to ``aggregate_id`` on a fresh connection, committed: it
    fails (lock time-out) if the cancelled operation left a lock behind."""
    other = await connect()
    store = db.async_store()
    await store.append(other, ExpectedVersion.any(), events(1, aggregate_id))
    await other.commit()
    await maybe_await(other.close())


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
