"""Event reads chunk by chunk on PostgreSQL (pupsourcing.adapters.postgres._reads).

Every read the store decodes goes through these cursors: chunk by chunk
through psycopg's prepared statements when psycopg and libpq allow it, as a
plain ``execute()`` otherwise. Both ways must read the same events, leave the
connection usable after any failure and keep psycopg's prepared-statement
cache coherent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import require
from helpers import event
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError

psycopg = require("psycopg")

from psycopg.pq import TransactionStatus  # noqa: E402 - after the require

from pupsourcing.adapters.postgres import _reads as postgres_reads  # noqa: E402
from pupsourcing.aio import AsyncPostgresStore, AsyncProcessor  # noqa: E402
from pupsourcing.projection import Processor, ProcessorConfig, batch  # noqa: E402
from test_postgres_store import PG, libpq_trace, make_pg  # noqa: E402, F401 - make_pg: a fixture

pytestmark = pytest.mark.postgres

CHUNK = postgres_reads.CHUNK_ROWS
SIZES = (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7)


def test_chunked_reads_are_on_where_libpq_has_the_mode() -> None:
    # psycopg 3.2 added capabilities, with chunked mode (for libpq 17+).
    has_mode = hasattr(psycopg, "capabilities") and psycopg.capabilities.has_stream_chunked()
    tested = postgres_reads._release(psycopg.__version__) in postgres_reads.TESTED_VERSIONS
    assert (has_mode and tested) == postgres_reads.SUPPORTED
    if has_mode:
        assert postgres_reads.SUPPORTED, (
            f"psycopg {psycopg.__version__} is not in TESTED_VERSIONS: run these tests "
            "with it and add it there, or reads stay unchunked"
        )


@pytest.fixture
def pg(make_pg: Any) -> PG:  # noqa: F811 - the fixture imported above
    made: PG = make_pg()
    return made


@dataclass
class Mode:
    chunked: bool
    reads: list[int] = field(default_factory=list)
    """The row counts of the reads that went chunk by chunk."""


@pytest.fixture(params=[True, False], ids=["chunked", "whole"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Mode:
    """Read chunk by chunk (where libpq can) or whole."""
    mode = Mode(request.param)
    if not mode.chunked:
        monkeypatch.setattr(postgres_reads, "SUPPORTED", False)
    elif not postgres_reads.SUPPORTED:
        pytest.skip(
            f"no chunked reads: psycopg {psycopg.__version__}, libpq {psycopg.pq.version()}"
        )
    read_gen = postgres_reads._read_gen

    def counted(*args: Any) -> Any:
        rows = yield from read_gen(*args)
        mode.reads.append(len(rows))
        return rows

    monkeypatch.setattr(postgres_reads, "_read_gen", counted)
    return mode


def append_streams(pg: PG) -> dict[str, tuple[PersistedEvent, ...]]:
    stored = {}
    with pg.connect() as conn:
        for size in SIZES:
            if size:
                batch = [
                    event(f"s{size}", f"E{i}", data={"i": i, "pad": "x" * i}) for i in range(size)
                ]
                stored[f"s{size}"] = pg.store.append(conn, ExpectedVersion.any(), batch).events
            else:
                stored["s0"] = ()
    return stored


def test_every_read_returns_the_stored_events(pg: PG, mode: Mode) -> None:
    stored = append_streams(pg)
    everything = sorted((e for s in stored.values() for e in s), key=lambda e: e.global_position)
    conn = pg.connect(autocommit=True)
    for _ in range(7):  # past psycopg's prepare_threshold: prepared from the sixth
        for name, expected in stored.items():
            stream = pg.store.read_aggregate_stream(conn, "Shop", "Order", name)
            assert stream.events == expected
            assert (
                pg.store.read_aggregate_stream(conn, "Shop", "Order", name, 2, CHUNK + 1).events
                == (expected[1 : CHUNK + 1])
            )
    assert pg.store.read_events(conn, 0, 10_000) == everything
    assert pg.store.read_events(conn, 5, CHUNK + 1) == everything[5 : CHUNK + 6]
    assert pg.store.read_latest_events(conn, 2 * CHUNK) == everything[-2 * CHUNK :]
    if mode.chunked:
        assert max(mode.reads) == len(everything)
    else:
        assert mode.reads == []


def test_reads_prepare_through_psycopgs_cache(pg: PG, mode: Mode) -> None:
    (name, expected), *_ = ((k, v) for k, v in append_streams(pg).items() if len(v) > CHUNK)
    conn = pg.connect(autocommit=True)

    def prepared() -> list[str]:
        rows = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        return [r[0] for r in rows if "ORDER BY aggregate_version" in r[0]]

    for _ in range(7):
        assert pg.store.read_aggregate_stream(conn, "Shop", "Order", name).events == expected
    assert len(prepared()) == 1
    # On ROLLBACK psycopg forgets its prepared statements and has the server
    # drop them all before the next query (psycopg 3.3 also on DEALLOCATE ALL).
    conn.execute("ROLLBACK")  # the server only warns: no transaction in progress
    assert prepared() == []
    for _ in range(7):
        assert pg.store.read_aggregate_stream(conn, "Shop", "Order", name).events == expected
    assert len(prepared()) == 1

    unprepared = pg.connect(autocommit=True, prepare_threshold=None)
    for _ in range(7):
        assert pg.store.read_aggregate_stream(unprepared, "Shop", "Order", name).events == expected
    rows = unprepared.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert rows == (0,)


FAILS_HALFWAY = "SELECT n, 1 / (150 - n) FROM generate_series(1, 200) AS n"
"""A query whose server fails after sending more than two chunks."""


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_server_error_halfway_leaves_the_connection_usable(
    pg: PG, mode: Mode, autocommit: bool
) -> None:
    conn = pg.connect(autocommit=autocommit)
    for _ in range(2):  # once unprepared, once prepared
        cursor = postgres_reads.ReadCursor(conn)
        with pytest.raises(psycopg.errors.DivisionByZero):
            cursor.read(FAILS_HALFWAY, ())
        if autocommit:
            assert conn.info.transaction_status == TransactionStatus.IDLE
        else:
            assert conn.info.transaction_status == TransactionStatus.INERROR
            conn.rollback()
        conn.prepare_threshold = 0
    assert conn.execute("SELECT 42").fetchone() == (42,)


class Boom(Exception):
    pass


def exploding_rows(at: int) -> Any:
    def factory(cursor: Any) -> Any:
        seen = []

        def make_row(row: Any) -> Any:
            seen.append(row)
            if len(seen) == at:
                raise Boom(at)
            return row

        return make_row

    return factory


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_row_that_fails_to_decode_stops_the_read_cleanly(
    pg: PG, mode: Mode, autocommit: bool
) -> None:
    conn = pg.connect(autocommit=autocommit)
    cursor = postgres_reads.ReadCursor(conn, row_factory=exploding_rows(CHUNK + 3))
    with pytest.raises(Boom):  # from read() or, reading whole, from fetchall()
        cursor.read("SELECT n FROM generate_series(1, 200000) AS n", ()).fetchall()
    # The rest of the result was read and dropped; the transaction goes on.
    idle = TransactionStatus.IDLE if autocommit else TransactionStatus.INTRANS
    assert conn.info.transaction_status == idle
    assert conn.execute("SELECT 42").fetchone() == (42,)


def test_pipeline_mode_reads_whole(pg: PG) -> None:
    stored = append_streams(pg)
    conn = pg.connect(autocommit=True)
    with conn.pipeline():
        for name, expected in stored.items():
            assert pg.store.read_aggregate_stream(conn, "Shop", "Order", name).events == expected


def test_asyncio_reads_and_failures(pg: PG, mode: Mode) -> None:
    stored = append_streams(pg)
    store = AsyncPostgresStore()

    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True)
        try:
            for _ in range(7):
                for name, expected in stored.items():
                    stream = await store.read_aggregate_stream(conn, "Shop", "Order", name)
                    assert stream.events == expected
            for factory, error in (
                (None, psycopg.errors.DivisionByZero),
                (exploding_rows(70), Boom),
            ):
                cursor = postgres_reads.AsyncReadCursor(conn, row_factory=factory)
                sql = FAILS_HALFWAY if factory is None else "SELECT generate_series(1, 200000)"
                with pytest.raises(error):
                    await (await cursor.read(sql, ())).fetchall()
                assert conn.info.transaction_status == TransactionStatus.IDLE
            cursor = await conn.execute("SELECT 42")
            assert await cursor.fetchone() == (42,)
        finally:
            await conn.close()

    asyncio.run(scenario())


FALLBACK_CHILD = r"""
import asyncio, json, sys

import psycopg

dsn, fake = sys.argv[1], sys.argv[2]
if fake == "no-internals":
    sys.modules["psycopg._preparing"] = None  # a psycopg laid out otherwise
else:
    psycopg.__version__ = fake

from pupsourcing.adapters.postgres import PostgresStore, _reads
from pupsourcing.aio import AsyncPostgresStore

chunked = []
read_gen = _reads._read_gen
def counted(*args):
    chunked.append(1)
    return (yield from read_gen(*args))
_reads._read_gen = counted

store = PostgresStore()
names = json.loads(sys.argv[3])
conn = psycopg.connect(dsn, autocommit=True)
reads = [repr(store.read_aggregate_stream(conn, "Shop", "Order", n).events) for n in names]
reads.append(repr(store.read_events(conn, 0, 10_000)))
reads.append(repr(store.read_latest_events(conn, 70)))

async def read_async():
    aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        store = AsyncPostgresStore()
        return [repr((await store.read_aggregate_stream(aconn, "Shop", "Order", n)).events)
                for n in names]
    finally:
        await aconn.close()

reads += asyncio.run(read_async())
print(json.dumps({"reason": _reads.UNSUPPORTED_REASON, "chunked": len(chunked), "reads": reads}))
"""


@pytest.mark.parametrize("fake", ["3.1.18", "3.4.0", "no-internals"])
def test_an_untested_psycopg_falls_back_to_the_same_reads(pg: PG, fake: str) -> None:
    """Below, above and beside the tested releases reads go whole (a fresh
    interpreter imports the module under the fake psycopg) and return exactly
    what the chunked reads return."""
    if not postgres_reads.SUPPORTED:
        pytest.skip(f"no chunked reads to compare with: {postgres_reads.UNSUPPORTED_REASON}")
    stored = append_streams(pg)
    names = list(stored)
    conn = pg.connect(autocommit=True)
    fast = [repr(pg.store.read_aggregate_stream(conn, "Shop", "Order", n).events) for n in names]
    fast.append(repr(pg.store.read_events(conn, 0, 10_000)))
    fast.append(repr(pg.store.read_latest_events(conn, 70)))
    fast += fast[: len(names)]  # the asyncio store reads the same streams
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", FALLBACK_CHILD, pg.dsn, fake, json.dumps(names)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    expected = "laid out otherwise" if fake == "no-internals" else f"psycopg {fake} is not"
    assert expected in result["reason"]
    assert result["chunked"] == 0
    assert result["reads"] == fast


@pytest.mark.parametrize(
    ("version", "supported"),
    [("3.1.18", False), ("3.2.0", True), ("3.3.9", True), ("3.4.0", False), ("4.0", False)],
)
def test_only_tested_releases_read_chunk_by_chunk(
    monkeypatch: pytest.MonkeyPatch, version: str, supported: bool
) -> None:
    if not psycopg.capabilities.has_stream_chunked():
        pytest.skip(f"libpq {psycopg.pq.version()} has no chunked rows mode")
    monkeypatch.setattr(psycopg, "__version__", version)
    reason = postgres_reads.unsupported_reason()
    assert (reason is None) == supported, reason
    # A patch release that renamed a private method the reads call.
    internals = (*postgres_reads._CURSOR_INTERNALS, "_renamed_away")
    monkeypatch.setattr(postgres_reads, "_CURSOR_INTERNALS", internals)
    reason = postgres_reads.unsupported_reason()
    assert reason is not None
    assert ("lacks _renamed_away" in reason) == supported, reason


class Collect:
    """A projection that keeps what it is handed, blocking or asyncio."""

    name = "collect"

    def __init__(self) -> None:
        self.seen: list[PersistedEvent] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen.append(event)


class AsyncCollect(Collect):
    name = "collect_async"

    async def handle(self, event: PersistedEvent, tx: Any) -> None:  # type: ignore[override]
        self.seen.append(event)


def test_processors_read_their_batches_chunk_by_chunk(pg: PG, mode: Mode) -> None:
    everything = sorted(
        (e for s in append_streams(pg).values() for e in s), key=lambda e: e.global_position
    )
    config = ProcessorConfig(batch_size=CHUNK + 5)
    blocking = Collect()
    with Processor(pg.connect(), pg.store, config) as processor:
        assert processor.catch_up(blocking) == len(everything)
    assert blocking.seen == everything
    batches = len(mode.reads)

    async def scenario() -> AsyncCollect:
        collect = AsyncCollect()
        conn = await psycopg.AsyncConnection.connect(pg.dsn)
        try:
            processor = AsyncProcessor(conn, AsyncPostgresStore(), config)
            assert await processor.catch_up(collect) == len(everything)
        finally:
            await conn.close()
        return collect

    assert asyncio.run(scenario()).seen == everything
    if mode.chunked:
        full = -(-len(everything) // (CHUNK + 5))  # the reads that found events
        assert sorted(mode.reads[:batches], reverse=True)[:full] == [
            min(CHUNK + 5, len(everything) - i * (CHUNK + 5)) for i in range(full)
        ]
        assert mode.reads[batches:] == mode.reads[:batches]
    else:
        assert mode.reads == []


def test_only_a_batch_that_wrote_nothing_skips_the_wal_flush(pg: PG) -> None:
    """A checkpoint move alone may commit without waiting for the disk (a
    crash loses it whole, and the events are handled again with nothing to
    write); a batch whose handler wrote commits durably, as the session says."""
    append_streams(pg)
    store, dialect = pg.store, pg.store.dialect
    conn = pg.connect()
    store._run(conn, dialect.load_checkpoint("p"))
    conn.commit()
    read = dialect.fetch_statement(3, None, 5, (), (), None)

    def level() -> str:
        return str(conn.execute("SHOW synchronous_commit").fetchone()[0])

    # In a transaction of its own (a batch that handed no events) ...
    assert store._run(conn, dialect.advance_and_read("p", 0, 3, read))[0] is True
    assert conn.info.transaction_status == TransactionStatus.IDLE
    # ... and in the batch's, opened before the handler ran, either statement.
    for advance in (
        lambda: dialect.advance_and_read("p", 3, 8, read),
        lambda: dialect.advance_checkpoint("p", 8, 9),
    ):
        store._run(conn, dialect.begin_batch(False))
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert level() == "on"
        assert store._run(conn, advance()) not in (False, (False, None))
        assert level() == "off"  # for this transaction alone
        conn.commit()
        assert level() == "on"
    # A write before the compare-and-set (a savepoint's too): durable.
    conn.execute("CREATE TEMP TABLE model (n int)")
    conn.commit()
    for write in ("INSERT INTO model VALUES (1)", "SAVEPOINT s; INSERT INTO model VALUES (2)"):
        store._run(conn, dialect.begin_batch(False))
        conn.execute(write)
        assert store._run(conn, dialect.advance_checkpoint("p", 9, 10)) is True
        assert level() == "on"
        conn.rollback()
    assert pg.store.get_checkpoint(conn, "p") == 9


def test_the_next_batch_is_read_with_the_compare_and_set(pg: PG) -> None:
    everything = sorted(
        (e for s in append_streams(pg).values() for e in s), key=lambda e: e.global_position
    )
    store, dialect = pg.store, pg.store.dialect
    conn = pg.connect()
    store._run(conn, dialect.load_checkpoint("p"))
    conn.commit()
    read = dialect.fetch_statement(3, None, 5, (), (), None)
    # No transaction open (the handler wrote nothing): the statement is the
    # whole batch, committed on its own.
    advanced, rows = store._run(conn, dialect.advance_and_read("p", 0, 3, read))
    assert advanced is True
    assert dialect.decode_events(rows) == everything[3:8]
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert pg.scalar("SELECT last_global_position FROM projection_checkpoints") == 3
    # A handler's write opened the transaction: the statement joins it.
    conn.execute("CREATE TEMP TABLE model (n int)")
    conn.execute("INSERT INTO model VALUES (1)")
    read = dialect.fetch_statement(everything[-1].global_position, None, 5, (), (), None)
    assert store._run(conn, dialect.advance_and_read("p", 3, 8, read)) == (True, [])
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    conn.rollback()
    assert pg.scalar("SELECT last_global_position FROM projection_checkpoints") == 3
    assert store._run(conn, dialect.advance_and_read("p", 0, 9, read)) == (False, None)
    conn.rollback()


class AtomicBlocks:
    """Writes each event's row inside ``with tx.transaction():`` (psycopg's
    atomic block: a savepoint inside an open transaction, a transaction of
    its own on an idle connection) and fails at ``fail_at``."""

    name = "atomic"

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.statuses: set[TransactionStatus] = set()

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.statuses.add(tx.info.transaction_status)
        with tx.transaction():
            tx.execute("INSERT INTO model VALUES (%s)", (event.global_position,))
        if event.global_position == self.fail_at:
            raise RuntimeError("boom")


class AsyncAtomicBlocks(AtomicBlocks):
    async def handle(self, event: PersistedEvent, tx: Any) -> None:  # type: ignore[override]
        self.statuses.add(tx.info.transaction_status)
        async with tx.transaction():
            await tx.execute("INSERT INTO model VALUES (%s)", (event.global_position,))
        if event.global_position == self.fail_at:
            raise RuntimeError("boom")


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_batch_read_ahead_hands_its_events_inside_its_transaction(pg: PG, api: str) -> None:
    """The batches after the first come with the previous compare-and-set;
    their handler must still run in the batch's transaction, so that its
    atomic blocks are savepoints that a failing batch rolls back with it."""
    with pg.connect() as conn:
        conn.execute("CREATE TABLE model (position bigint)")
        pg.store.append(conn, ExpectedVersion.any(), [event("a", f"E{i}") for i in range(6)])
    config = ProcessorConfig(batch_size=2)

    def catch_up(projection: AtomicBlocks) -> None:
        if api == "blocking":
            with Processor(pg.connect(), pg.store, config) as processor:
                processor.catch_up(projection)
            return

        async def scenario() -> None:
            conn = await psycopg.AsyncConnection.connect(pg.dsn)
            try:
                await AsyncProcessor(conn, AsyncPostgresStore(), config).catch_up(projection)
            finally:
                await conn.close()

        asyncio.run(scenario())

    kind = AtomicBlocks if api == "blocking" else AsyncAtomicBlocks
    failing = kind(fail_at=6)  # the third batch, read with the second's compare-and-set
    with pytest.raises(ProjectionError):
        catch_up(failing)
    assert failing.statuses == {TransactionStatus.INTRANS}
    assert pg.scalar("SELECT count(*) FROM model") == 4  # the third batch left nothing
    catch_up(kind(fail_at=None))
    rows = pg.connect().execute("SELECT position FROM model ORDER BY position").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_catch_up_batch_is_two_round_trips(pg: PG) -> None:
    """While events are read ahead, a batch whose handler writes nothing is
    its compare-and-set (with the next read) and one COMMIT that opens the
    next batch's transaction."""
    with pg.connect() as conn:
        for a in range(6):
            pg.store.append(conn, ExpectedVersion.any(), [event(f"a{a}", "E") for _ in range(10)])
    conn = pg.connect()
    with (
        libpq_trace(conn) as messages,
        Processor(conn, pg.store, ProcessorConfig(batch_size=10)) as processor,
    ):
        assert processor.catch_up(Collect()) == 60
    # One entry per exchange that waited for the server: what the client sent.
    exchanges: list[str] = []
    sent: list[str] = []
    for direction, message in messages:
        if direction == "F" and message.split(" ")[0] in ("Query", "Execute"):
            sent.append(message)
        elif direction == "B" and message.startswith("ReadyForQuery"):
            exchanges.append(" + ".join(sent))
            sent = []
    chained = [i for i, e in enumerate(exchanges) if e == 'Query "COMMIT; BEGIN"']
    assert len(chained) == 5, exchanges  # batches 1 to 5 read their successor
    assert [b - a for a, b in itertools.pairwise(chained)] == [2, 2, 2, 2], exchanges
    assert exchanges[chained[-1] + 2] == 'Query "COMMIT"', exchanges  # batch 6 read nothing
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_a_run_stopped_between_batches_leaves_no_transaction_open(pg: PG) -> None:
    """The COMMIT that opened the next batch's transaction is undone when
    the processor stops before that batch."""
    with pg.connect() as conn:
        pg.store.append(conn, ExpectedVersion.any(), [event("a", f"E{i}") for i in range(6)])
    stop = threading.Event()

    class StopsAfterTwo(Collect):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            if event.global_position == 2:
                stop.set()

    conn = pg.connect()
    projection = StopsAfterTwo()
    with Processor(conn, pg.store, ProcessorConfig(batch_size=2)) as processor:
        processor.run(projection, stop=stop)
        assert [e.global_position for e in projection.seen] == [1, 2]
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert pg.store.get_checkpoint(conn, "collect") == 2


def test_a_connection_with_its_own_isolation_level_keeps_it_in_every_batch(pg: PG) -> None:
    """Where psycopg's BEGIN is not the plain one, a batch's COMMIT does not
    open the next transaction itself: psycopg opens each, at its level."""
    with pg.connect() as conn:
        conn.execute("CREATE TABLE model (position bigint)")
        pg.store.append(conn, ExpectedVersion.any(), [event("a", f"E{i}") for i in range(6)])
    levels: list[str] = []

    class RecordsLevel(AtomicBlocks):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            levels.append(str(tx.execute("SHOW transaction_isolation").fetchone()[0]))

    conn = pg.connect()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    projection = RecordsLevel(fail_at=None)
    with Processor(conn, pg.store, ProcessorConfig(batch_size=2)) as processor:
        assert processor.catch_up(projection) == 6
    assert levels == ["repeatable read"] * 6
    assert projection.statuses == {TransactionStatus.INTRANS}
    assert pg.scalar("SELECT count(*) FROM model") == 6
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_batches_commit_alone_at_least_once_a_chain_period(
    pg: PG, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL hands a listening session its notifications only while it
    is idle outside a transaction, and the server's notification queue
    cannot be cleaned past it: a processor that keeps opening the next
    batch's transaction with its COMMIT stops doing so for one batch at
    least every CHAIN_SECONDS."""
    monkeypatch.setattr(batch, "CHAIN_SECONDS", 0.25)
    with pg.connect() as conn:
        pg.store.append(conn, ExpectedVersion.any(), [event("a", f"E{i}") for i in range(16)])

    class Slow(Collect):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            time.sleep(0.05)  # 0.1 s a batch of 2

    conn = pg.connect()
    with (
        libpq_trace(conn) as messages,
        Processor(conn, pg.store, ProcessorConfig(batch_size=2)) as processor,
    ):
        assert processor.catch_up(Slow()) == 16
    commits = [
        "chained" if "BEGIN" in message else "alone"
        for direction, message in messages
        if direction == "F" and message.startswith("Query") and "COMMIT" in message
    ]
    # 8 batches: the first 7 read their successor. Each run of chained
    # commits lasts under 0.25 s (at most 3 batches), then one commits alone.
    runs = "".join("c" if c == "chained" else "a" for c in commits[-8:])
    assert "cccc" not in runs, commits
    assert runs.count("c") >= 4, commits
    assert "a" in runs[:-1], commits
