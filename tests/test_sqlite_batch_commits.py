"""How a SQLite processor commits its batches: a batch after one that wrote
nothing but its checkpoint commits without waiting for the disk
(``synchronous=NORMAL``, WAL mode only), and the connection's own level is
back after every batch; a lazily committed batch that wrote after all is
made durable at once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import event
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.adapters.sqlite import AsyncSQLiteStore, SQLiteStore, connect, connect_async
from pupsourcing.aio import AsyncProcessor
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.store.plan import Statement

LOWER = "PRAGMA synchronous = 1"
RESTORE = "PRAGMA synchronous = 2"
SYNC = "PRAGMA user_version = 0"
BATCH_BEGINS = ("BEGIN IMMEDIATE", "BEGIN DEFERRED")
"""How a batch opens (sqlite3's own implicit ``BEGIN`` before other writes aside)."""


class Writes:
    """Writes a row through ``tx`` for the events at ``positions`` (every
    event when ``None``); raises at ``fail_at``."""

    name = "writes"

    def __init__(self, positions: set[int] | None = None, fail_at: int | None = None) -> None:
        self.positions = positions
        self.fail_at = fail_at

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        if e.global_position == self.fail_at:
            raise RuntimeError("boom")
        if self.positions is None or e.global_position in self.positions:
            tx.execute("INSERT INTO seen (position) VALUES (?)", (e.global_position,))


def store_with(path: Path, events: int, **options: Any) -> tuple[SQLiteStore, sqlite3.Connection]:
    conn = connect(path, **options)
    store = SQLiteStore()
    store.create_schema(conn)
    conn.execute("CREATE TABLE seen (position INTEGER PRIMARY KEY)")
    conn.commit()
    for i in range(events):
        store.append(conn, ExpectedVersion.no_stream(), [event(f"o-{i}")])
        conn.commit()
    return store, conn


def traced(conn: sqlite3.Connection) -> list[str]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    return statements


def batches(statements: list[str]) -> list[list[str]]:
    """The statements of each batch, from the read of the settings that
    opens it."""
    found: list[list[str]] = []
    for s in statements:
        if "pragma_synchronous()" in s:
            found.append([])
        if found:
            found[-1].append(s)
    return found


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def test_a_batch_after_one_that_wrote_nothing_commits_lazily(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 5)
    assert synchronous(conn) == 2  # FULL, sqlite3's default
    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=2)) as processor:
        assert processor.catch_up(Writes(positions=set())) == 5
    begins = [i for i, s in enumerate(statements) if s in BATCH_BEGINS]
    # The lazy batches take the write lock at their first write.
    assert [statements[i] for i in begins] == ["BEGIN IMMEDIATE", *["BEGIN DEFERRED"] * 2]
    # Nothing known before the first batch: the connection's level. The
    # second is lazy, and the level stays lowered while batches write
    # nothing but their checkpoints: the third reads no settings and sets
    # no level. It goes back once no batch follows (here: caught up).
    assert statements.count(LOWER) == 1
    assert statements.count(RESTORE) == 1
    lowered, restored = statements.index(LOWER), statements.index(RESTORE)
    assert begins[0] < lowered < begins[1] < begins[2] < restored
    assert "COMMIT" in statements[begins[2] : restored]
    assert len(batches(statements)) == 2
    assert SYNC not in statements
    assert synchronous(conn) == 2


def test_the_level_goes_back_when_a_run_stops(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 6)
    stop = threading.Event()

    class StopsAt(Writes):
        def handle(self, e: PersistedEvent, tx: Any) -> None:
            if e.global_position == 4:
                stop.set()

    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=1)) as processor:
        processor.run(StopsAt(positions=set()), stop=stop)
    assert statements.count(LOWER) == 1
    assert statements[-1] == RESTORE
    assert store.get_checkpoint(conn, "writes") == 4
    assert synchronous(conn) == 2


class Halt(BaseException):
    """An interruption past the plan, as KeyboardInterrupt is."""


def test_an_interrupted_lazy_batch_gives_the_callers_connection_its_level(
    tmp_path: Path,
) -> None:
    store, conn = store_with(tmp_path / "s.db", 6)

    class HaltsAt(Writes):
        def handle(self, e: PersistedEvent, tx: Any) -> None:
            if e.global_position == 4:
                raise Halt

    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=1)) as processor, pytest.raises(Halt):
        processor.catch_up(HaltsAt(positions=set()))
    assert statements.count(LOWER) == 1  # batches 2 and 3 were lazy, so was the 4th
    assert synchronous(conn) == 2
    assert not conn.in_transaction
    assert store.get_checkpoint(conn, "writes") == 3


def test_a_lazy_batch_that_cannot_begin_puts_the_level_back(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE fails while another connection writes (busy): no
    batch runs, and the level lowered for it goes back."""
    store, setup = store_with(tmp_path / "s.db", 1)
    setup.close()
    writer = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    busy = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store._run(busy, store.dialect.begin_batch(True))
        assert synchronous(busy) == 2
        assert not busy.in_transaction
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        busy.close()


def test_a_projection_that_writes_keeps_the_connections_level(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 6)
    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=2)) as processor:
        assert processor.catch_up(Writes()) == 6
    assert LOWER not in statements
    assert [r[0] for r in conn.execute("SELECT position FROM seen")] == [1, 2, 3, 4, 5, 6]


def test_a_lazy_batch_that_wrote_is_made_durable_at_once(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 6)
    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=2)) as processor:
        assert processor.catch_up(Writes(positions={4})) == 6
    first, second, third = batches(statements)
    assert LOWER not in first
    # Lowered (the first wrote nothing), then wrote: a commit at the
    # connection's level, which rewrites a page, syncs the log up to it.
    assert LOWER in second
    after = second[second.index("COMMIT") :]
    assert after.index("PRAGMA synchronous = 2") < after.index(SYNC)
    assert after[after.index(SYNC) + 1] == "COMMIT"
    assert LOWER not in third  # the last batch wrote: the next is not lazy
    assert [r[0] for r in conn.execute("SELECT position FROM seen")] == [4]
    assert synchronous(conn) == 2


@pytest.mark.parametrize(
    ("journal", "level"), [("DELETE", "FULL"), ("WAL", "NORMAL"), ("WAL", "OFF")]
)
def test_only_a_wal_connection_above_normal_is_lowered(
    tmp_path: Path, journal: str, level: str
) -> None:
    store, conn = store_with(tmp_path / "s.db", 4, wal=journal == "WAL")
    conn.execute(f"PRAGMA synchronous = {level}")
    before = synchronous(conn)
    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=1)) as processor:
        assert processor.catch_up(Writes(positions=set())) == 4
    assert not [s for s in statements if s.startswith("PRAGMA synchronous =")]
    assert synchronous(conn) == before


def test_a_failed_lazy_batch_puts_the_level_back(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 4)
    statements = traced(conn)
    config = ProcessorConfig(batch_size=2, max_attempts=1)
    with Processor(conn, store, config) as processor, pytest.raises(ProjectionError, match="3"):
        processor.catch_up(Writes(positions=set(), fail_at=3))
    failed = batches(statements)[-1]
    assert LOWER in failed
    assert failed.index("ROLLBACK") < failed.index("PRAGMA synchronous = 2")
    assert synchronous(conn) == 2
    assert not conn.in_transaction
    assert store.get_checkpoint(conn, "writes") == 2


def test_the_asyncio_processor_commits_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, setup = store_with(path, 4)
    setup.close()

    async def scenario() -> tuple[list[str], int]:
        conn = await connect_async(path)
        statements: list[str] = []
        await conn.set_trace_callback(statements.append)
        try:
            async with AsyncProcessor(conn, AsyncSQLiteStore(), ProcessorConfig(batch_size=1)) as p:
                assert await p.catch_up(Writes(positions=set())) == 4
            async with conn.execute("PRAGMA synchronous") as cursor:
                row = await cursor.fetchone()
            assert row is not None
            return statements, int(row[0])
        finally:
            await conn.close()

    statements, level = asyncio.run(scenario())
    assert statements.count("BEGIN DEFERRED") == 3  # batches 2 to 4 lock at their write
    assert statements.count(LOWER) == 1  # kept lowered over batches 2 to 4
    assert statements.count(RESTORE) == 1
    assert level == 2


def test_a_cancelled_asyncio_processor_gives_the_callers_connection_its_level(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    _, setup = store_with(path, 6)
    setup.close()

    class WaitsAt:
        name = "waits"

        def __init__(self) -> None:
            self.waiting = asyncio.Event()

        async def handle(self, e: PersistedEvent, tx: Any) -> None:
            if e.global_position == 4:
                self.waiting.set()
                await asyncio.sleep(60)

    async def scenario() -> tuple[int, bool, int]:
        conn = await connect_async(path)
        store = AsyncSQLiteStore()
        try:
            async with AsyncProcessor(conn, store, ProcessorConfig(batch_size=1)) as p:
                projection = WaitsAt()
                task = asyncio.create_task(p.catch_up(projection))
                await projection.waiting.wait()  # in the 4th batch, a lazy one
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            async with conn.execute("PRAGMA synchronous") as cursor:
                row = await cursor.fetchone()
            assert row is not None
            checkpoint = await store.get_checkpoint(conn, "waits")
            return int(row[0]), conn.in_transaction, checkpoint
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == (2, False, 3)


class Orphan:
    """Writes nothing until ``position``, then a row whose deferred foreign
    key fails only at COMMIT."""

    name = "orphan"

    def __init__(self, position: int) -> None:
        self.position = position

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        if e.global_position == self.position:
            tx.execute("INSERT INTO child (parent) VALUES (42)")


def test_a_failed_lazy_commit_puts_the_level_back(tmp_path: Path) -> None:
    store, conn = store_with(tmp_path / "s.db", 4)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    conn.commit()
    statements = traced(conn)
    config = ProcessorConfig(batch_size=2)
    with (
        Processor(conn, store, config) as processor,
        pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"),
    ):
        processor.catch_up(Orphan(position=3))
    assert LOWER in batches(statements)[-1]  # the batch that failed to commit was lazy
    assert synchronous(conn) == 2
    assert not conn.in_transaction
    assert store.get_checkpoint(conn, "orphan") == 2
    assert conn.execute("SELECT count(*) FROM child").fetchone()[0] == 0


def test_a_busy_database_between_lazy_batches_gets_the_level_back_while_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The read after the third batch meets a database another connection
    holds exclusively (busy: a transient failure): the processor rolls
    back, puts the level back for its wait, and lowers it again for the
    next lazy batch."""
    path = tmp_path / "s.db"
    _, conn = store_with(path, 6, timeout=0)

    class BusyOnce(SQLiteStore):
        armed = True

        def _execute(self, tx: sqlite3.Connection, statement: Statement) -> list[Any]:
            read = statement.sql.startswith("SELECT global_position")
            if self.armed and read and statement.params[0] == 3:
                self.armed = False
                holder = sqlite3.connect(path, isolation_level=None)
                holder.execute("PRAGMA locking_mode = EXCLUSIVE")
                holder.execute("BEGIN EXCLUSIVE")
                try:
                    return super()._execute(tx, statement)
                finally:
                    holder.close()
            return super()._execute(tx, statement)

    store = BusyOnce()
    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=1)) as processor:
        assert processor.catch_up(Writes(positions=set())) == 6
    assert not store.armed
    lowered = [i for i, s in enumerate(statements) if s == LOWER]
    restored = [i for i, s in enumerate(statements) if s == RESTORE]
    assert len(lowered) == 2, statements
    assert len(restored) == 2
    assert lowered[0] < restored[0] < lowered[1] < restored[1]
    assert "could not run (database is locked)" in caplog.text
    assert synchronous(conn) == 2


def other_writer(path: Path) -> sqlite3.Connection:
    """Another connection that gives up at once when the write lock is held."""
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_a_lazy_batch_leaves_the_write_lock_free_while_its_handler_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay or a projection writing elsewhere does not keep the
    application's writers waiting for its handler, once its batches are lazy."""
    path = tmp_path / "s.db"
    store, conn = store_with(path, 3)
    writer = other_writer(path)
    appended: dict[int, str] = {}

    class AppendsElsewhere:
        name = "elsewhere"

        def handle(self, e: PersistedEvent, tx: Any) -> None:
            if e.global_position > 3:
                return  # (the events appended below)
            try:
                writer.execute("BEGIN IMMEDIATE")
                store.append(writer, ExpectedVersion.no_stream(), [event(f"w-{e.global_position}")])
                writer.execute("COMMIT")
                appended[e.global_position] = "appended"
            except sqlite3.OperationalError as exc:
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
                appended[e.global_position] = exc.sqlite_errorname

    statements = traced(conn)
    with Processor(conn, store, ProcessorConfig(batch_size=1)) as processor:
        assert processor.catch_up(AppendsElsewhere()) == 5
    # The first batch took the lock at its start; the next ones at their
    # checkpoint's write, after the handler.
    assert appended == {1: "SQLITE_BUSY", 2: "appended", 3: "appended"}
    assert store.get_checkpoint(conn, "elsewhere") == 5
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("BEGIN DEFERRED") == 4
    assert "could not run" not in caplog.text
    writer.close()


class ReadModelError(Exception):
    """What a handler may raise from its write's driver error."""


class ReadsThenWrites:
    """At position 2, reads through ``tx``, lets another connection commit
    (the first time only), then writes through ``tx`` unless ``reads_only``
    (raising a driver error as a :class:`ReadModelError` when ``wraps``)."""

    name = "reads_then_writes"

    def __init__(self, path: Path, reads_only: bool, wraps: bool = False) -> None:
        self.path = path
        self.reads_only = reads_only
        self.wraps = wraps
        self.calls: list[int] = []

    def handle(self, e: PersistedEvent, tx: Any) -> None:
        self.calls.append(e.global_position)
        if e.global_position != 2:
            return
        tx.execute("SELECT count(*) FROM seen").fetchone()
        self.commit_elsewhere_once()
        if self.reads_only:
            return
        try:
            tx.execute("INSERT INTO seen (position) VALUES (?)", (e.global_position,))
        except sqlite3.OperationalError as exc:
            if self.wraps:
                raise ReadModelError("could not record the event") from exc
            raise

    def commit_elsewhere_once(self) -> None:
        """Another connection commits, the first time position 2 is handled."""
        if self.calls.count(2) == 1:
            with contextlib.closing(other_writer(self.path)) as other:
                other.execute("INSERT INTO other (n) VALUES (1)")


@pytest.mark.parametrize(("reads_only", "wraps"), [(False, False), (True, False), (False, True)])
def test_a_lazy_batch_that_read_and_lost_the_write_lock_runs_again_taking_it_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reads_only: bool, wraps: bool
) -> None:
    """The handler's write (or, if it writes nothing, the checkpoint's) after
    another connection committed is refused at once (SQLITE_BUSY_SNAPSHOT):
    the batch is rolled back and handled again with the lock taken at its
    start, with no error, no back-off and no dead letter, and the processor
    defers the lock no more; also when the handler raises the driver's
    error as one of its own."""
    path = tmp_path / "s.db"
    store, conn = store_with(path, 4)
    conn.execute("CREATE TABLE other (n INTEGER)")
    conn.commit()
    statements = traced(conn)
    projection = ReadsThenWrites(path, reads_only, wraps)
    config = ProcessorConfig(batch_size=1, on_failure="dead_letter")
    with caplog.at_level("DEBUG", logger="pupsourcing"), Processor(conn, store, config) as p:
        assert p.catch_up(projection) == 4
    assert projection.calls == [1, 2, 2, 3, 4]
    begins = [s for s in statements if s in BATCH_BEGINS]
    assert begins[:3] == ["BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN IMMEDIATE"]
    assert "BEGIN DEFERRED" not in begins[2:]  # batch 4 is lazy, and takes the lock first
    seen = [r[0] for r in conn.execute("SELECT position FROM seen")]
    assert seen == ([] if reads_only else [2])
    assert conn.execute("SELECT count(*) FROM other").fetchone()[0] == 1
    assert store.get_checkpoint(conn, "reads_then_writes") == 4
    assert store.list_dead_letters(conn) == []
    assert "could not run" not in caplog.text
    assert "could not take it (database is locked)" in caplog.text


class AsyncReadsThenWrites(ReadsThenWrites):
    """:class:`ReadsThenWrites` for the asyncio processor (``tx`` is aiosqlite's)."""

    async def handle(self, e: PersistedEvent, tx: Any) -> None:  # type: ignore[override]
        self.calls.append(e.global_position)
        if e.global_position != 2:
            return
        async with tx.execute("SELECT count(*) FROM seen") as cursor:
            await cursor.fetchone()
        self.commit_elsewhere_once()
        if not self.reads_only:
            await tx.execute("INSERT INTO seen (position) VALUES (?)", (e.global_position,))


def test_the_asyncio_processor_runs_a_batch_that_lost_the_write_lock_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same retry as the blocking processor's: once, at once, no dead letter."""
    path = tmp_path / "s.db"
    store, setup = store_with(path, 4)
    setup.execute("CREATE TABLE other (n INTEGER)")
    setup.commit()
    projection = AsyncReadsThenWrites(path, reads_only=False)

    async def scenario() -> list[str]:
        conn = await connect_async(path)
        statements: list[str] = []
        await conn.set_trace_callback(statements.append)
        try:
            config = ProcessorConfig(batch_size=1, on_failure="dead_letter")
            async with AsyncProcessor(conn, AsyncSQLiteStore(), config) as p:
                assert await p.catch_up(projection) == 4
            return statements
        finally:
            await conn.close()

    with caplog.at_level("DEBUG", logger="pupsourcing"):
        statements = asyncio.run(scenario())
    assert projection.calls == [1, 2, 2, 3, 4]
    begins = [s for s in statements if s in BATCH_BEGINS]
    assert begins[:3] == ["BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN IMMEDIATE"]
    assert "BEGIN DEFERRED" not in begins[2:]
    assert [r[0] for r in setup.execute("SELECT position FROM seen")] == [2]
    assert setup.execute("SELECT count(*) FROM other").fetchone()[0] == 1
    assert store.get_checkpoint(setup, "reads_then_writes") == 4
    assert store.list_dead_letters(setup) == []
    assert "could not run" not in caplog.text
    assert "could not take it" in caplog.text
    setup.close()
