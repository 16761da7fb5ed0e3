"""What only the asyncio API has: awaited and plain handlers on real asyncio
connections, cancellation, never blocking the event loop, and the two APIs
refusing each other's objects. Everything the APIs share is tested on both by
the acceptance suite (the ``backend`` fixture's ``api`` dimension)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aio_facade import maybe_await
from conftest import ASYNC_DRIVERS, Backend, made_backend, require
from helpers import MYPY_CACHE, events
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.adapters.sqlite import SQLiteStore, connect, connect_async
from pupsourcing.aio import AsyncProcessor, AsyncRunner, AsyncSQLiteStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.runner import ProjectionRunner, Runner
from test_projection import append_many, create_read_model, read_model_positions


@pytest.fixture(params=list(ASYNC_DRIVERS))
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend of the blocking API, to set up and check; the tests open
    asyncio connections with :func:`connections` and stores with
    ``db.async_store()``."""
    require(ASYNC_DRIVERS[request.param])  # skipped (failed in CI) without the driver
    with made_backend(request.param, tmp_path) as b:
        yield b


@contextlib.asynccontextmanager
async def connections(db: Backend) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """A function opening asyncio connections to ``db``, all closed on exit.
    Lock waits end after 5 s, so that a test fails instead of hanging."""
    opened: list[Any] = []

    async def open_connection() -> Any:
        conn = await db.open_async()
        opened.append(conn)
        if db.name == "postgres":
            await execute(conn, "SET lock_timeout = '5s'")
        elif db.name == "mysql":
            await execute(conn, "SET SESSION innodb_lock_wait_timeout = 5")
        await conn.commit()
        return conn

    try:
        yield open_connection
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                await maybe_await(conn.close())


async def execute(conn: Any, sql: str, params: Any = ()) -> list[Any]:
    """Run SQL on an asyncio connection of any of the three drivers."""
    cursor = await maybe_await(conn.cursor())
    try:
        await cursor.execute(sql, params)
        return list(await cursor.fetchall()) if cursor.description else []
    finally:
        await maybe_await(cursor.close())


def insert_sql(db: Backend) -> str:
    mark = "?" if db.name == "sqlite" else "%s"
    return f"INSERT INTO rm (position, aggregate_id) VALUES ({mark}, {mark})"


class AsyncReadModel:
    """Writes one row per event through the processor's asyncio connection."""

    def __init__(self, db: Backend, name: str = "async_rm") -> None:
        self.name = name
        self.sql = insert_sql(db)
        self.calls: list[int] = []
        self.fail_at: int | None = None
        self.block_at: int | None = None
        self.blocked = asyncio.Event()

    async def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.calls.append(event.global_position)
        await execute(tx, self.sql, (event.global_position, event.aggregate_id))
        await asyncio.sleep(0)  # other tasks run in the middle of the batch
        if event.global_position == self.fail_at:
            raise RuntimeError(f"boom at {event.global_position}")
        if event.global_position == self.block_at:
            self.blocked.set()
            await asyncio.sleep(3600)


def test_async_handler_writes_through_tx_exactly_once(db: Backend) -> None:
    create_read_model(db)
    positions = append_many(db, aggregates=3, per_aggregate=4)
    projection = AsyncReadModel(db)
    projection.fail_at = positions[6]

    async def scenario() -> None:
        config = ProcessorConfig(batch_size=5)
        async with (
            connections(db) as connect,
            AsyncProcessor(connect, db.async_store(), config) as processor,
        ):
            with pytest.raises(ProjectionError) as caught:
                await processor.catch_up(projection)
            assert caught.value.global_position == positions[6]
            assert isinstance(caught.value.__cause__, RuntimeError)
            assert read_model_positions(db) == positions[:5]
            projection.fail_at = None
            assert await processor.catch_up(projection) == 7
            assert await processor.catch_up(projection) == 0

    asyncio.run(scenario())
    assert read_model_positions(db) == positions
    assert db.store.get_checkpoint(db.connection(), "async_rm") == positions[-1]


def test_plain_def_handler_on_the_callers_connection(db: Backend) -> None:
    positions = append_many(db, aggregates=2, per_aggregate=3)
    seen: list[tuple[int, Any]] = []

    class Plain:
        name = "plain"

        def handle(self, event: PersistedEvent, tx: Any) -> None:
            seen.append((event.global_position, tx))

    async def scenario() -> Any:
        async with connections(db) as connect:
            conn = await connect()
            async with AsyncProcessor(conn, db.async_store()) as processor:
                assert await processor.catch_up(Plain()) == 6
            # the caller's connection is left open and usable
            assert await execute(conn, "SELECT 1") == [(1,)]
            return conn

    conn = asyncio.run(scenario())
    assert [position for position, _ in seen] == positions
    assert all(tx is conn for _, tx in seen)


@pytest.mark.parametrize("own_connection", [True, False], ids=["factory", "callers"])
def test_cancelling_mid_batch_commits_nothing(db: Backend, own_connection: bool) -> None:
    create_read_model(db)
    positions = append_many(db, aggregates=1, per_aggregate=6)
    stuck = AsyncReadModel(db, name="stuck")
    stuck.block_at = positions[2]

    async def scenario() -> None:
        store = db.async_store()
        async with connections(db) as connect:
            conn = None if own_connection else await connect()
            processor = AsyncProcessor(connect if conn is None else conn, store)
            task = asyncio.create_task(processor.run(stuck))
            await asyncio.wait_for(stuck.blocked.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The batch's rows were never committed, and its transaction (with
            # SQLite's write lock) is gone: a new processor handles everything.
            assert read_model_positions(db) == []
            assert db.store.get_checkpoint(db.connection(), "stuck") == 0
            stuck.block_at = None
            async with AsyncProcessor(connect, store) as fresh:
                # (on MySQL a transaction left open would hold the horizon back)
                assert await asyncio.wait_for(fresh.catch_up(stuck), 20) == 6
            if conn is not None:
                assert await execute(conn, "SELECT 1") == [(1,)]  # rolled back, still usable
            await processor.close()

    asyncio.run(scenario())
    assert read_model_positions(db) == positions


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_batch_on_the_callers_connection_is_redone_once(
    db: Backend, interruption: type[BaseException]
) -> None:
    """Not only cancellation: any ``BaseException`` from ``handle`` rolls the
    batch back, so the same processor on the same connection applies every
    event exactly once when it runs again."""
    create_read_model(db)
    positions = append_many(db, aggregates=2, per_aggregate=5)

    class Interrupting(AsyncReadModel):
        async def handle(self, event: PersistedEvent, tx: Any) -> None:
            await super().handle(event, tx)
            if event.global_position == positions[7]:
                raise interruption("stop right now")

    async def scenario() -> None:
        async with connections(db) as connect:
            conn = await connect()
            async with AsyncProcessor(conn, db.async_store(), ProcessorConfig(5)) as processor:
                with pytest.raises(interruption):
                    await processor.catch_up(Interrupting(db))
                assert read_model_positions(db) == positions[:5]
                assert await processor.catch_up(AsyncReadModel(db)) == 5

    asyncio.run(scenario())
    assert read_model_positions(db) == positions


def test_cancelling_the_runner_stops_every_projection(db: Backend) -> None:
    create_read_model(db)
    positions = append_many(db, aggregates=1, per_aggregate=4)
    stuck = AsyncReadModel(db, name="stuck")
    stuck.block_at = positions[1]
    others: list[int] = []

    class Other:
        name = "other"

        async def handle(self, event: PersistedEvent, tx: Any) -> None:
            others.append(event.global_position)

    async def scenario() -> None:
        store = db.async_store()
        async with connections(db) as connect:
            processors = [AsyncProcessor(connect, store) for _ in range(2)]
            runner = asyncio.create_task(
                AsyncRunner().run(
                    [
                        ProjectionRunner(stuck, processors[0]),
                        ProjectionRunner(Other(), processors[1]),
                    ]
                )
            )
            await asyncio.wait_for(stuck.blocked.wait(), 10)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
            running = [t for t in asyncio.all_tasks() if t.get_name().startswith("pupsourcing-")]
            assert running == []
            assert [p._conn for p in processors] == [None, None]  # cancelled: closed

    asyncio.run(scenario())
    assert read_model_positions(db) == []
    assert db.store.get_checkpoint(db.connection(), "stuck") == 0


def test_a_cancelled_runner_lets_each_processor_close_its_connection(tmp_path: Path) -> None:
    """Cancelling the runner cancels each projection's task once: a second
    cancel would cut its clean-up short, leaving its connection open (and
    aiosqlite's thread answering a closed event loop)."""
    path = tmp_path / "cancel.db"
    with closing(connect(path)) as conn:
        SQLiteStore().create_schema(conn)
        SQLiteStore().append(conn, ExpectedVersion.any(), events(2, "a"))
        conn.commit()
    closed: list[str] = []
    opened: list[str] = []

    async def slow_to_close() -> Any:
        conn = await connect_async(path)
        opened.append("opened")
        close = conn.close

        async def closing() -> None:
            await asyncio.sleep(0.05)  # a close that takes a round trip
            await close()
            closed.append("closed")

        conn.close = closing  # type: ignore[method-assign]
        return conn

    async def scenario() -> None:
        started = asyncio.Event()

        class Stuck:
            name = "stuck"

            async def handle(self, event: PersistedEvent, tx: Any) -> None:
                started.set()
                await asyncio.Event().wait()

        class Idle:
            name = "idle"

            async def handle(self, event: PersistedEvent, tx: Any) -> None:
                pass

        store = AsyncSQLiteStore()
        runner = asyncio.ensure_future(
            AsyncRunner().run(
                [
                    ProjectionRunner(Stuck(), AsyncProcessor(slow_to_close, store)),
                    ProjectionRunner(Idle(), AsyncProcessor(slow_to_close, store)),
                ]
            )
        )
        # Both connections open (one still opening when cancelled is closed
        # later, when it arrives: see test_a_connection_still_opening_...).
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(1000):
            if len(opened) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(opened) == 2
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert closed == ["closed", "closed"]

    asyncio.run(scenario())


def test_a_connection_still_opening_when_cancelled_is_closed(tmp_path: Path) -> None:
    """Cancelled while its connection opens, the processor returns at once;
    the connection, when it arrives, is closed rather than left open."""
    path = tmp_path / "opening.db"
    with closing(connect(path)) as conn:
        SQLiteStore().create_schema(conn)
    arrived: list[Any] = []

    async def slow_open() -> Any:
        conn = await connect_async(path)
        arrived.append(conn)
        await asyncio.sleep(0.3)  # the rest of a slow connect (a TLS handshake, say)
        return conn

    class Nothing:
        name = "nothing"

        async def handle(self, event: PersistedEvent, tx: Any) -> None:
            pass

    async def scenario() -> None:
        processor = AsyncProcessor(slow_open, AsyncSQLiteStore())
        running = asyncio.ensure_future(processor.catch_up(Nothing()))
        while not arrived:
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 0.2)  # at once, not after the connect
        await asyncio.sleep(0.6)
        with pytest.raises(ValueError, match="no active connection"):
            await arrived[0].execute("SELECT 1")

    asyncio.run(scenario())


def slow_after_the_head_claim(store: Any, seconds: float) -> Any:
    """``store``, but its append waits ``seconds`` once the aggregate head
    is claimed (a slow network, say), before the statements that follow."""
    base = type(store)

    class Slow(base):  # type: ignore[valid-type, misc]
        async def _query(self, tx: Any, statement: Any) -> Any:
            rows = await super()._query(tx, statement)
            claim = statement.sql.lstrip().upper().startswith(("UPDATE", "INSERT", "WITH"))
            if claim and store.config.aggregate_heads_table in statement.sql:
                await asyncio.sleep(seconds)
            return rows

    return Slow(store.config)


def test_an_append_cut_short_by_a_timeout_leaves_none_of_it(db: Backend) -> None:
    """A caller that bounds an append with ``asyncio.timeout`` and goes on
    with its transaction (commits its other writes) must not commit half an
    append: the aggregate's head moved past events that were never stored
    would refuse every later append at the right version. On PostgreSQL,
    whose append is one statement without a savepoint, the cancelled append
    aborted the transaction: its commit commits none of it, even when the
    append's statement had finished."""
    first = db.connection()
    db.store.append(first, ExpectedVersion.any(), events(1, "a"))
    first.commit()

    async def scenario() -> None:
        store = db.async_store()
        async with connections(db) as connect:
            conn = await connect()
            await store.append(conn, ExpectedVersion.any(), events(1, "other"))  # its own write
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await slow_after_the_head_claim(store, 5).append(
                        conn, ExpectedVersion.exact(1), events(3, "a")
                    )
            await conn.commit()
            stream = await store.read_aggregate_stream(conn, "Shop", "Order", "a")
            await conn.rollback()
            assert [e.aggregate_version for e in stream] == [1]
            result = await store.append(conn, ExpectedVersion.exact(stream.version), events(1, "a"))
            await conn.commit()
            assert result.to_version == stream.version + 1

    asyncio.run(scenario())
    assert db.count_events() == (2 if db.name == "postgres" else 3)  # "other" rolled back


def test_waiting_for_a_lock_does_not_block_the_event_loop(db: Backend) -> None:
    holder = db.connection()
    db.store.append(holder, ExpectedVersion.any(), events(1, "a"))  # holds the lock, uncommitted

    async def scenario() -> None:
        store = db.async_store()
        # If the loop were blocked, the append below could not end before
        # its lock wait times out (5 s): the test fails instead of hanging.
        async with connections(db) as connect:
            conn = await connect()
            append = asyncio.create_task(store.append(conn, ExpectedVersion.any(), events(1, "a")))
            loop = asyncio.get_running_loop()
            ticks, started = 0, loop.time()
            while loop.time() - started < 0.3:
                await asyncio.sleep(0.01)
                ticks += 1
            assert not append.done(), "the append did not wait for the lock"
            assert ticks >= 10
            holder.commit()  # the blocking connection, briefly on the loop thread
            result = await asyncio.wait_for(append, 10)
            await conn.commit()
            assert (result.from_version, result.to_version) == (1, 2)

    try:
        asyncio.run(scenario())
    finally:
        holder.rollback()
    assert db.count_events() == 2


def test_async_processor_waits_out_a_writer_holding_the_lock(tmp_path: Path) -> None:
    """As the blocking processor does: a batch that cannot get SQLite's write
    lock within the busy timeout is rolled back and retried, not fatal."""
    require("aiosqlite")
    path = tmp_path / "busy.db"
    writer = connect(path)
    SQLiteStore().create_schema(writer)
    SQLiteStore().append(writer, ExpectedVersion.any(), events(2, "a"))
    writer.commit()
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    seen: list[int] = []

    class Seen:
        name = "seen"

        async def handle(self, event: PersistedEvent, tx: Any) -> None:
            seen.append(event.global_position)

    logger, records = logging.getLogger("pupsourcing.test.async_busy"), []
    logger.addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r)})())

    async def scenario() -> None:
        config = ProcessorConfig(logger=logger)
        opener = lambda: connect_async(path, timeout=0.05)  # noqa: E731
        async with AsyncProcessor(opener, AsyncSQLiteStore(), config) as processor:
            asyncio.get_running_loop().call_later(0.4, holder.rollback)
            assert await processor.catch_up(Seen()) == 2

    try:
        asyncio.run(scenario())
    finally:
        holder.close()
        writer.close()
    assert seen == [1, 2]
    assert any("retrying" in r.getMessage() for r in records if r.levelno == logging.WARNING)


# -- the two APIs refuse each other's objects ------------------------------------


class AsyncRecorder:
    name = "async_recorder"

    async def handle(self, event: PersistedEvent, tx: Any) -> None: ...


def test_processors_refuse_the_other_apis_stores() -> None:
    with pytest.raises(TypeError, match=r"asyncio stores go with pupsourcing\.aio"):
        Processor(lambda: None, AsyncSQLiteStore())
    with pytest.raises(TypeError, match=r"blocking stores go with pupsourcing\.projection"):
        AsyncProcessor(lambda: None, SQLiteStore())


def test_blocking_processor_refuses_an_async_handler() -> None:
    def unreachable() -> Any:
        raise AssertionError("no connection should be opened")

    with pytest.raises(TypeError, match="AsyncProcessor"):
        Processor(unreachable, SQLiteStore()).catch_up(AsyncRecorder())


def test_runners_refuse_the_other_apis_processors() -> None:
    blocking = Processor(lambda: None, SQLiteStore())
    asyncio_processor = AsyncProcessor(lambda: None, AsyncSQLiteStore())
    with pytest.raises(TypeError, match="AsyncRunner takes AsyncProcessor"):
        Runner().run([ProjectionRunner(AsyncRecorder(), asyncio_processor)])
    with pytest.raises(TypeError, match="Runner takes Processor"):
        asyncio.run(AsyncRunner().run([ProjectionRunner(AsyncRecorder(), blocking)]))


def test_runners_refuse_two_processors_on_one_connection() -> None:
    """A processor's connection is its own (its batches are transactions on
    it): two projections cannot share one, on either runner."""

    class Connection:
        def cursor(self) -> None: ...
        def commit(self) -> None: ...

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def handle(self, event: PersistedEvent, tx: Any) -> None: ...

    conn = Connection()
    blocking = [Processor(conn, SQLiteStore()) for _ in "ab"]
    with pytest.raises(ValueError, match="own connection"):
        Runner().run([ProjectionRunner(Named(n), p) for n, p in zip("ab", blocking, strict=True)])
    twins = [AsyncProcessor(conn, AsyncSQLiteStore()) for _ in "ab"]
    runners = [ProjectionRunner(Named(n), p) for n, p in zip("ab", twins, strict=True)]
    with pytest.raises(ValueError, match="own connection"):
        asyncio.run(AsyncRunner().run(runners))


# -- typing: what mypy --strict accepts and refuses -----------------------------

REPO = Path(__file__).parent.parent

TYPED_USE = """
from typing import Any

import aiosqlite
import psycopg

from pupsourcing import PersistedEvent
from pupsourcing.adapters.sqlite import connect_async
from pupsourcing.aio import AsyncPostgresStore, AsyncProcessor, AsyncSQLiteStore


class Balances:
    name = "balances"

    async def handle(self, event: PersistedEvent, tx: aiosqlite.Connection) -> None:
        await tx.execute("SELECT 1")


class Plain:
    name = "plain"

    def handle(self, event: PersistedEvent, tx: Any) -> None: ...


async def main(conn: psycopg.AsyncConnection[Any]) -> None:
    on_conn = AsyncProcessor(conn, AsyncPostgresStore())
    on_factory = AsyncProcessor(lambda: connect_async("x.db"), AsyncSQLiteStore())
    reveal_type(on_conn)
    reveal_type(on_factory)
    await on_factory.catch_up(Balances())
    await on_conn.run(Plain())
"""

MISUSE = """
from typing import Any

from pupsourcing import PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.aio import AsyncProcessor


class Balances:
    name = "balances"

    async def handle(self, event: PersistedEvent, tx: Any) -> None: ...


async def main() -> None:
    AsyncProcessor(connect("x.db"), SQLiteStore())


def blocking() -> None:
    from pupsourcing.projection import Processor

    Processor(connect("x.db"), SQLiteStore()).catch_up(Balances())
"""


def mypy_strict(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(MYPY_CACHE)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(REPO / "src")},
    )


def test_mypy_strict_accepts_the_asyncio_api_as_documented(tmp_path: Path) -> None:
    """The example service and typed uses: handlers async or plain, connections
    or factories, with the connection type inferred."""
    use = tmp_path / "typed_use.py"
    use.write_text(TYPED_USE)
    result = mypy_strict(tmp_path, REPO / "examples" / "async_service" / "main.py", use)
    assert result.returncode == 0, result.stdout
    assert 'Revealed type is "pupsourcing.aio.processor.AsyncProcessor[psycopg.' in result.stdout
    assert "AsyncProcessor[aiosqlite.core.Connection]" in result.stdout


def test_mypy_strict_refuses_mixing_the_apis(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(MISUSE)
    result = mypy_strict(tmp_path, misuse)
    assert result.returncode == 1
    assert 'No overload variant of "AsyncProcessor" matches argument types' in result.stdout
    assert '"SQLiteStore"' in result.stdout
    assert 'Argument 1 to "catch_up" of "Processor" has incompatible type "Balances"' in (
        result.stdout
    )


@pytest.mark.mysql
def test_asyncmy_logs_no_note_for_a_schema_that_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncmy logs each note of a statement as a WARNING: ``create_schema`` on
    an existing store said "Table 'events' already exists" once per table,
    each time a service started. The notes are off while the schema is
    created, and back on for the caller's statements after it."""
    require("asyncmy")
    with made_backend("mysql", tmp_path) as db:
        store = db.async_store()

        async def main() -> None:
            async with connections(db) as connect:
                conn = await connect()
                with caplog.at_level(logging.WARNING, logger="asyncmy"):
                    await store.create_schema(conn)
                    await store.create_schema(conn)
                    await conn.commit()
                    async with AsyncProcessor(connect, store) as processor:
                        await processor.catch_up(AsyncReadModel(db))
                    assert [r.getMessage() for r in caplog.records] == []
                    await execute(conn, "DROP TABLE IF EXISTS no_such_table")
                assert [r.getMessage() for r in caplog.records] == [
                    "Unknown table 'test.no_such_table'".replace("test", db.database)
                ]

        asyncio.run(main())
