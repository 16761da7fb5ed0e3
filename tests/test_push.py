"""Push wake-up: an idle processor handles a new event at once, not after
``poll_interval`` (API.md section 7)."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import time
import uuid
from contextlib import closing
from typing import Any

import pytest

from conftest import PG_DSN, Backend, require
from helpers import event
from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.projection import ProcessorConfig
from pupsourcing.store import StoreConfig
from pupsourcing.store.plan import drive

pytestmark = pytest.mark.both_apis

SLOW_POLL = ProcessorConfig(poll_interval=5.0)
_SENT = re.compile(r"\t(Bind|Query)\t")
PROMPT = 0.5
"""Seconds within which a processor woken by a PostgreSQL notification must
have handled the event (API.md section 7: within 0.5 s with a 5 s poll)."""
LONG_POLL = ProcessorConfig(poll_interval=60.0)
"""Elsewhere the contract says "wakes", with no time: an in-process wake comes
before the writer's commit, and the retries that follow (QUICK_RETRIES) find
it; on MySQL any write transaction on the server, another test's too, holds
the processor back for as long as it lasts. No short time is safe under load
there (0.51 s seen on SQLite at load 17). Those processors poll every 60 s, and
an event handled within :data:`WOKEN` was found because of the wake, not by
the poll; test_quick_retries_follow_an_in_process_wake pins the retries."""
WOKEN = 30.0


def prompt(backend: Backend) -> float:
    return PROMPT if backend.name == "postgres" else WOKEN


def slow_poll(backend: Backend) -> ProcessorConfig:
    return SLOW_POLL if backend.name == "postgres" else LONG_POLL


class Timed:
    """Records when each event was handed to it."""

    name = "timed"

    def __init__(self) -> None:
        self.handled: dict[int, float] = {}
        self.arrived = threading.Condition()

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        with self.arrived:
            self.handled[event.global_position] = time.monotonic()
            self.arrived.notify_all()

    def wait_for(self, position: int, timeout: float) -> float | None:
        """When ``position`` was handled; ``None`` if not within ``timeout``."""
        with self.arrived:
            self.arrived.wait_for(lambda: position in self.handled, timeout)
        return self.handled.get(position)


class Running:
    """A processor running a projection in a thread until the test ends."""

    def __init__(self, backend: Backend, projection: Timed, config: ProcessorConfig) -> None:
        self.processor = backend.Processor(backend.connect, backend.store, config)
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(projection,), daemon=True)
        self.thread.start()

    def _run(self, projection: Timed) -> None:
        try:
            self.processor.run(projection, stop=self.stop)
        except BaseException as exc:  # pragma: no cover - reported by close()
            self.failure = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the processor did not stop"
        self.processor.close()
        assert self.failure is None, self.failure


def append_committed(backend: Backend, aggregate_id: str) -> int:
    conn = backend.connect()
    try:
        result = backend.store.append(conn, ExpectedVersion.any(), [event(aggregate_id)])
        conn.commit()
    finally:
        conn.close()
    return int(result.global_positions[0])


def idle_processor(backend: Backend, config: ProcessorConfig) -> tuple[Running, Timed]:
    """A running processor that has handled a first event and is now idle."""
    projection = Timed()
    first = append_committed(backend, "first")
    running = Running(backend, projection, config)
    assert projection.wait_for(first, 30.0) is not None  # (MySQL: other writers hold it back)
    time.sleep(0.2)  # well into its idle wait
    return running, projection


def test_append_in_this_process_wakes_an_idle_processor(backend: Backend) -> None:
    running, projection = idle_processor(backend, slow_poll(backend))
    try:
        for n in range(3):
            started = time.monotonic()
            position = append_committed(backend, f"agg-{n}")
            handled = projection.wait_for(position, prompt(backend) + 5)
            assert handled is not None, "the event was never handled"
            assert handled - started < prompt(backend), f"handled after {handled - started:.2f}s"
            time.sleep(0.1)
    finally:
        running.close()


def test_late_commit_is_found_by_a_quick_retry(backend: Backend) -> None:
    """In-process wakes fire on append, before the commit; the commit that
    follows soon after is still found quickly."""
    running, projection = idle_processor(backend, slow_poll(backend))
    try:
        conn = backend.connect()
        result = backend.store.append(conn, ExpectedVersion.any(), [event("late")])
        time.sleep(0.01)
        started = time.monotonic()
        conn.commit()
        conn.close()
        handled = projection.wait_for(result.global_positions[0], prompt(backend) + 5)
        assert handled is not None
        assert handled - started < prompt(backend)
    finally:
        running.close()


def test_quick_retries_follow_an_in_process_wake() -> None:
    """After an append in this process the processor polls again within a
    few short pauses (the appender may not have committed yet), then waits
    ``poll_interval`` again: the schedule, without timing a loaded machine."""
    import logging

    from pupsourcing.projection._waiter import _Wakes
    from pupsourcing.store._appended import appended

    table = f"quick_{uuid.uuid4().hex[:10]}"
    wakes = _Wakes(table, None, logging.getLogger("test_push"))
    assert not wakes.woken(listening=False)
    appended(table)
    assert wakes.woken(listening=False)
    pauses = []
    for _ in range(8):
        before = time.monotonic()
        pauses.append(wakes.deadline(5.0, listening=False) - before)
    retries = [pause for pause in pauses if pause < 4.9]
    assert retries, pauses
    assert pauses[: len(retries)] == retries, pauses  # the retries come first
    assert max(retries) <= 0.5 + 0.01, pauses  # a late commit is seen within 0.5 s
    assert 0.5 <= sum(retries) <= 1.0 + 0.01, pauses  # for most of a second, not longer
    assert pauses[-1] > 4.9, pauses  # then poll_interval again


def test_events_that_notify_nothing_are_found_by_polling(backend: Backend) -> None:
    """A Go-like writer inserts with plain SQL: no notification, no in-process
    signal; the poll still finds its event."""
    running, projection = idle_processor(backend, ProcessorConfig(poll_interval=0.3))
    try:
        config = backend.store.config
        mark = backend.store.dialect.placeholder
        event_id: Any = {"postgres": uuid.uuid4(), "sqlite": str(uuid.uuid4())}.get(
            backend.name, uuid.uuid4().bytes
        )
        conn = backend.connect()
        cursor = conn.cursor()
        cursor.execute(
            f"INSERT INTO {config.events_table} (bounded_context, aggregate_type, aggregate_id, "
            "aggregate_version, event_id, event_type, payload, metadata) "
            f"VALUES ('Shop', 'Order', 'go-1', 1, {mark}, 'FromGo', {mark}, '{{}}')",
            (event_id, b"{}"),
        )
        cursor.close()
        conn.commit()
        conn.close()
        deadline = time.monotonic() + 30  # MySQL: as long as other writers hold it back
        while len(projection.handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(projection.handled) == 2
    finally:
        running.close()


def test_async_processor_run_again_in_another_event_loop(tmp_path: Any) -> None:
    """An asyncio processor closed and run again under a new event loop
    (another ``asyncio.run``) is woken there as before: its wait failed
    with "bound to a different event loop"."""
    from pupsourcing.adapters.sqlite import SQLiteStore, connect, connect_async
    from pupsourcing.aio import AsyncProcessor, AsyncSQLiteStore

    path = str(tmp_path / "events.db")
    with closing(connect(path)) as conn:
        SQLiteStore().create_schema(conn)
    processor = AsyncProcessor(lambda: connect_async(path), AsyncSQLiteStore(), SLOW_POLL)
    projection = Timed()

    async def session(aggregate_id: str) -> float | None:
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(projection, stop=stop))
        await asyncio.sleep(0.3)
        conn = await connect_async(path)
        started = time.monotonic()
        result = await AsyncSQLiteStore().append(conn, ExpectedVersion.any(), [event(aggregate_id)])
        await conn.commit()
        await conn.close()
        position = result.global_positions[0]
        while position not in projection.handled and time.monotonic() - started < 2:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)
        await processor.close()
        handled = projection.handled.get(position)
        return None if handled is None else handled - started

    for aggregate_id in ("first-loop", "second-loop"):
        latency = asyncio.run(session(aggregate_id))
        assert latency is not None, f"{aggregate_id}: the event was never handled"
        assert latency < PROMPT, f"{aggregate_id}: handled after {latency:.2f}s"


# -- PostgreSQL: notifications from any connection ---------------------------


def _pg_store(api: str, config: StoreConfig) -> Any:
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.aio import AsyncPostgresStore

    return (AsyncPostgresStore if api == "async" else PostgresStore)(config)


@pytest.fixture
def pg_table() -> Any:
    """A private events table in the test database (its own notify channel)."""
    psycopg = require("psycopg")
    config = StoreConfig(
        events_table=f"push_{uuid.uuid4().hex[:10]}",
        checkpoints_table=f"push_cp_{uuid.uuid4().hex[:10]}",
        aggregate_heads_table=f"push_h_{uuid.uuid4().hex[:10]}",
        snapshots_table=f"push_s_{uuid.uuid4().hex[:10]}",
        dead_letters_table=f"push_d_{uuid.uuid4().hex[:10]}",
    )
    from pupsourcing.adapters.postgres import PostgresStore

    with psycopg.connect(PG_DSN) as conn:
        PostgresStore(config).create_schema(conn)
    yield config
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in (
            config.events_table,
            config.checkpoints_table,
            config.aggregate_heads_table,
            config.snapshots_table,
            config.dead_letters_table,
        ):
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def _append_elsewhere(config: StoreConfig) -> int:
    """An append by another connection, as another process makes it: the
    store's append statement, with no in-process signal."""
    import psycopg

    from pupsourcing.adapters.postgres import PostgresStore

    store = PostgresStore(config)
    with psycopg.connect(PG_DSN) as conn:
        plan = store.dialect.append(ExpectedVersion.any(), [event("elsewhere")])
        result = drive(plan, lambda statement: store._execute(conn, statement))
    return int(result.global_positions[0])


class Idle:
    """Set once a processor first waits for a notification (its start-up
    statements and ``LISTEN`` are behind it; a loaded machine may take
    longer than any fixed sleep to get there)."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        from pupsourcing.adapters.postgres import _listen

        self.event = threading.Event()
        sync_wait, async_wait = _listen.PsycopgListener.wait, _listen.AsyncPsycopgListener.wait

        def waiting(listener: Any, conn: Any, timeout: float) -> None:
            self.event.set()
            sync_wait(listener, conn, timeout)

        async def waiting_async(listener: Any, conn: Any, timeout: float) -> None:
            self.event.set()
            await async_wait(listener, conn, timeout)

        patch.setattr(_listen.PsycopgListener, "wait", waiting)
        patch.setattr(_listen.AsyncPsycopgListener, "wait", waiting_async)

    def wait(self) -> None:
        assert self.event.wait(30), "the processor never went idle"
        self.event.clear()  # for the next processor


def _run_idle(
    api: str,
    config: StoreConfig,
    seconds: float,
    during: Any,
    processor_config: ProcessorConfig = SLOW_POLL,
) -> tuple[Timed, int]:
    """Run a processor on a traced connection for ``seconds`` after it went
    idle, calling ``during()`` then; the projection and how many queries
    the processor sent meanwhile."""
    with pytest.MonkeyPatch.context() as patch:
        return _run_idle_traced(api, config, seconds, during, Idle(patch), processor_config)


def _run_idle_traced(
    api: str,
    config: StoreConfig,
    seconds: float,
    during: Any,
    idle: Idle,
    processor_config: ProcessorConfig,
) -> tuple[Timed, int]:
    import psycopg

    from pupsourcing.aio import AsyncProcessor
    from pupsourcing.projection import Processor

    projection = Timed()
    with tempfile.NamedTemporaryFile(suffix=".trace", delete=False) as trace:
        pass

    def queries() -> int:
        """Statements the client sent (libpq trace: a Bind or a Query each)."""
        with open(trace.name, encoding="latin-1") as lines:
            return sum(1 for line in lines if "\tF\t" in line and _SENT.search(line))

    store = _pg_store(api, config)
    try:
        if api == "sync":
            conn = psycopg.connect(PG_DSN)
            processor = Processor(conn, store, processor_config)
            stop = threading.Event()
            thread = threading.Thread(
                target=processor.run, args=(projection,), kwargs={"stop": stop}
            )
            thread.start()
            idle.wait()
            with open(trace.name, "w") as out:
                conn.pgconn.trace(out.fileno())
                during()
                time.sleep(seconds)
                conn.pgconn.untrace()
            stop.set()
            thread.join(10)
            conn.close()
        else:

            async def main() -> None:
                conn = await psycopg.AsyncConnection.connect(PG_DSN)
                processor = AsyncProcessor(conn, store, processor_config)
                stop = asyncio.Event()
                task = asyncio.create_task(processor.run(projection, stop=stop))
                await asyncio.to_thread(idle.wait)
                with open(trace.name, "w") as out:
                    conn.pgconn.trace(out.fileno())
                    await asyncio.to_thread(during)
                    await asyncio.sleep(seconds)
                    conn.pgconn.untrace()
                stop.set()
                await asyncio.wait_for(task, 10)
                await conn.close()

            asyncio.run(main())
        return projection, queries()
    finally:
        os.unlink(trace.name)


def _woken_by_one_append(api: str, pg_table: StoreConfig, delay: float) -> int:
    """An idle processor, and one event committed by another connection
    after ``delay`` s: it is handled within PROMPT. The statements the
    processor sent."""
    appended: list[tuple[int, float]] = []

    def append() -> None:
        time.sleep(delay)
        started = time.monotonic()
        appended.append((_append_elsewhere(pg_table), started))

    projection, sent = _run_idle(api, pg_table, 1.0, append)
    ((position, started),) = appended
    handled = projection.handled.get(position)
    assert handled is not None, "the event was never handled"
    assert handled - started < PROMPT, f"handled after {handled - started:.2f}s"
    return sent


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_commit_by_another_connection_wakes_the_processor(
    api: str, pg_table: StoreConfig
) -> None:
    _woken_by_one_append(api, pg_table, 0.2)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_idle_postgres_processor_sends_no_queries(api: str, pg_table: StoreConfig) -> None:
    projection, sent = _run_idle(api, pg_table, 1.5, lambda: None)
    assert projection.handled == {}
    assert sent == 0, f"an idle processor sent {sent} queries in 1.5 s"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_held_back_by_an_open_writer_backs_off(
    api: str, pg_table: StoreConfig
) -> None:
    """A writer left open behind a committed, notified event holds the
    processor back; the end of a writer notifies nothing, so the processor
    polls, but backing off towards ``poll_interval``: a few polls, not one
    every 0.1 s (about 30 statements a second before)."""
    import psycopg

    from pupsourcing.adapters.postgres import PostgresStore

    writer = psycopg.connect(PG_DSN)
    held: list[int] = []

    def hold_then_append() -> None:
        result = PostgresStore(pg_table).append(writer, ExpectedVersion.any(), [event("held")])
        held.append(result.global_positions[0])  # left open
        held.append(_append_elsewhere(pg_table))

    try:
        projection, sent = _run_idle(api, pg_table, 4.0, hold_then_append)
    finally:
        writer.close()
    assert len(held) == 2
    assert projection.handled == {}, "events behind an open writer were handled"
    # Polls (the horizon probe, one statement) every 0.1 s for the first
    # second after the wake, then once a second: about 13; polling every
    # 0.1 s throughout sent about 40.
    assert 1 <= sent <= 16, f"a held-back processor sent {sent} statements in 4 s"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_appends_to_a_same_named_table_elsewhere_wake_nobody(
    api: str, pg_table: StoreConfig
) -> None:
    """Another schema's events table of the same name notifies the same
    channel (a channel belongs to the database): its appends must not wake
    this table's processors."""
    import psycopg

    from pupsourcing.adapters.postgres import PostgresStore

    schema = f"push_other_{uuid.uuid4().hex[:10]}"
    elsewhere = f"{PG_DSN} options='-c search_path={schema}'"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with psycopg.connect(elsewhere) as conn:
            PostgresStore(pg_table).create_schema(conn)

        def append_elsewhere() -> None:
            with psycopg.connect(elsewhere) as conn:
                PostgresStore(pg_table).append(conn, ExpectedVersion.any(), [event("other")])

        projection, sent = _run_idle(api, pg_table, 1.0, append_elsewhere)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    assert projection.handled == {}
    assert sent == 0, f"an append to another schema's table cost {sent} statements"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_woken_postgres_processor_sends_one_batch(api: str, pg_table: StoreConfig) -> None:
    """The trace counts queries (the idle test's zero is no accident): a wake
    costs the processor a few statements, not a polling loop."""
    projection, sent = _run_idle(api, pg_table, 1.0, lambda: _append_elsewhere(pg_table))
    assert len(projection.handled) == 1
    assert 1 <= sent <= 12, sent


@pytest.fixture
def high_fds() -> Any:
    """Descriptors 0 to 1100 taken: the next connection's socket is past
    ``select``'s FD_SETSIZE (1024), as in a process with many sockets open."""
    import resource  # (POSIX, as is what is tested)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:  # raised for the test, as a program with many sockets would
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    taken = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while taken[-1] < 1100:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_on_a_high_descriptor_waits_quietly(
    api: str, pg_table: StoreConfig, high_fds: None
) -> None:
    """A socket numbered past 1023 must not break the wait (``select``
    refuses it): it went back to LISTEN and poll at once, over and over."""
    sent = _woken_by_one_append(api, pg_table, 0.5)
    assert sent <= 12, f"an idle processor sent {sent} statements in 1.5 s"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_wait_failing_on_a_live_connection_falls_back_to_polling(
    api: str, pg_table: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting fails though the connection works: the processor polls
    (every ``poll_interval``), not LISTEN and poll again in a loop."""
    from pupsourcing.adapters.postgres import _listen

    def broken(*args: Any) -> None:
        raise OSError("cannot wait")

    async def broken_async(*args: Any) -> None:
        broken()

    monkeypatch.setattr(_listen.PsycopgListener, "wait", broken)
    monkeypatch.setattr(_listen.AsyncPsycopgListener, "wait", broken_async)
    projection, sent = _run_idle(api, pg_table, 1.0, lambda: None)
    assert projection.handled == {}
    assert sent <= 12, f"an idle processor sent {sent} statements in 1 s"


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_on_a_direct_connection_probes_nothing_and_warns_nothing(
    api: str, pg_table: StoreConfig
) -> None:
    """A direct connection's backend is the server's: no probe connection,
    and no warning about push once the probe would have been given up
    (PROBE_WAIT); an append still wakes the processor at once."""
    import logging

    from helpers import LogRecords
    from pupsourcing.projection._waiter import PROBE_WAIT

    records = LogRecords(f"push-direct-{api}")
    quick = ProcessorConfig(poll_interval=5.0, logger=records.logger)
    appended: list[tuple[int, float]] = []

    def later() -> None:
        time.sleep(PROBE_WAIT + 0.5)
        appended.append((_append_elsewhere(pg_table), time.monotonic()))

    with pytest.MonkeyPatch.context() as patch:
        sent_probes: list[object] = []
        from pupsourcing.adapters.postgres import _listen

        patch.setattr(_listen._Counting, "_start_probing", lambda *a: sent_probes.append(a))
        projection, _ = _run_idle_traced(api, pg_table, 1.0, later, Idle(patch), quick)
    ((position, committed),) = appended
    assert position in projection.handled
    assert projection.handled[position] - committed < PROMPT
    assert sent_probes == []
    assert records.messages(logging.WARNING) == []


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_probe_notifications_wake_no_processor(api: str, pg_table: StoreConfig) -> None:
    """Another processor's probe (behind a pooler, on the same channel) is
    no append: it wakes nobody, even with the table's OID unknown (every
    payload counted then)."""
    import psycopg

    from pupsourcing.adapters.postgres import _listen

    channel = _pg_store(api, pg_table).dialect.notify_channel

    def probe() -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, %s)", (channel, f"{_listen.PROBE} 0123abcd"))

    projection, sent = _run_idle(api, pg_table, 1.0, probe)
    assert sent == 0, f"a probe cost {sent} statements"
    with pytest.MonkeyPatch.context() as patch:
        missing = "SELECT (SELECT NULL::text WHERE %s::text IS NOT NULL), pg_backend_pid()"
        patch.setattr(_listen, "_OID_SQL", missing)
        projection, sent = _run_idle_traced(api, pg_table, 1.0, probe, Idle(patch), SLOW_POLL)
    assert sent == 0, f"a probe cost {sent} statements with every payload counted"
    assert projection.handled == {}


def _ran_on(api: str, config: StoreConfig, runs: int) -> list[str]:
    """Run ``runs`` processors one after another on one caller's connection
    (each until idle, then stopped); then, on that connection, LISTEN on a
    channel of the caller's own while an append notifies and the caller's
    channel is notified: the channels of what the caller receives."""
    with pytest.MonkeyPatch.context() as patch:
        return _ran_on_idle(api, config, runs, Idle(patch))


def _ran_on_idle(api: str, config: StoreConfig, runs: int, idle: Idle) -> list[str]:
    import warnings

    import psycopg

    from pupsourcing.aio import AsyncProcessor
    from pupsourcing.projection import Processor

    store = _pg_store(api, config)

    def notify_both() -> None:
        _append_elsewhere(config)
        with psycopg.connect(PG_DSN, autocommit=True) as other:
            other.execute("NOTIFY callers_own")

    if api == "sync":
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for _ in range(runs):
                stop = threading.Event()
                processor = Processor(conn, store, SLOW_POLL)
                thread = threading.Thread(
                    target=processor.run, args=(Timed(),), kwargs={"stop": stop}
                )
                thread.start()
                idle.wait()
                stop.set()
                thread.join(10)
            conn.execute("LISTEN callers_own")
            notify_both()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # notifies() with handlers left: a warning
                return [n.channel for n in conn.notifies(timeout=0.5)]

    async def main() -> list[str]:
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            for _ in range(runs):
                stop = asyncio.Event()
                task = asyncio.create_task(
                    AsyncProcessor(conn, store, SLOW_POLL).run(Timed(), stop=stop)
                )
                await asyncio.to_thread(idle.wait)
                stop.set()
                await asyncio.wait_for(task, 10)
            await conn.execute("LISTEN callers_own")
            await asyncio.to_thread(notify_both)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return [n.channel async for n in conn.notifies(timeout=0.5)]

    return asyncio.run(main())


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_gives_the_callers_connection_back_unsubscribed(
    api: str, pg_table: StoreConfig
) -> None:
    """A processor that stopped leaves no LISTEN on the caller's connection
    (the caller would receive its notifications; a listening session that
    is not read holds the server's notification queue back) and no notify
    handler (there was one more for each processor that had run on it)."""
    assert _ran_on(api, pg_table, runs=2) == ["callers_own"]


def _seen_by_callers_handler(api: str, config: StoreConfig) -> tuple[list[str], Timed]:
    """A processor idle on a caller's connection that LISTENs on a channel
    of its own, with a notify handler of its own; that channel is notified
    and an append commits: the channels the caller's handler saw, and the
    projection."""
    import psycopg

    from pupsourcing.aio import AsyncProcessor
    from pupsourcing.projection import Processor

    store = _pg_store(api, config)
    projection, seen = Timed(), []

    def notify_both() -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as other:
            other.execute("NOTIFY callers_own, 'hello'")
        _append_elsewhere(config)

    if api == "sync":
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.add_notify_handler(lambda n: seen.append(n.channel))
            conn.execute("LISTEN callers_own")
            stop = threading.Event()
            processor = Processor(conn, store, SLOW_POLL)
            thread = threading.Thread(
                target=processor.run, args=(projection,), kwargs={"stop": stop}
            )
            thread.start()
            time.sleep(0.3)
            notify_both()
            time.sleep(0.5)
            stop.set()
            thread.join(10)
        return seen, projection

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            conn.add_notify_handler(lambda n: seen.append(n.channel))
            await conn.execute("LISTEN callers_own")
            stop = asyncio.Event()
            run = AsyncProcessor(conn, store, SLOW_POLL).run(projection, stop=stop)
            task = asyncio.create_task(run)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(notify_both)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return seen, projection


@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_leaves_the_callers_notify_handlers_their_notifications(
    api: str, pg_table: StoreConfig
) -> None:
    """An idle processor reads its wake-ups on the caller's connection: the
    notifications it reads go through psycopg's dispatch, so the caller's
    own handlers still get theirs (they were read and dropped)."""
    seen, projection = _seen_by_callers_handler(api, pg_table)
    assert "callers_own" in seen
    assert len(projection.handled) == 1  # and the append woke the processor


def _notifications(config: StoreConfig, store: Any, transactions: list[list[str]]) -> int:
    """Notifications a listener on the events table's channel receives while
    ``store`` makes ``transactions`` (each a list of aggregate ids, one
    single-event append each) on another connection."""
    import psycopg

    channel = store.dialect.notify_channel
    with psycopg.connect(PG_DSN, autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")
        with psycopg.connect(PG_DSN) as conn:
            for aggregates in transactions:
                for aggregate_id in aggregates:
                    store.append(conn, ExpectedVersion.any(), [event(aggregate_id)])
                conn.commit()
        return sum(1 for _ in listener.notifies(timeout=0.5))


def test_postgres_notify_false_appends_without_notifying(pg_table: StoreConfig) -> None:
    """``notify=False`` leaves the commit free of NOTIFY's database-wide lock:
    nothing is notified; by default one notification per transaction, however
    many appends it holds."""
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.aio import AsyncPostgresStore

    work = [["a", "b", "c"], ["a"]]
    assert _notifications(pg_table, PostgresStore(pg_table), work) == 2
    assert _notifications(pg_table, PostgresStore(pg_table, notify=False), work) == 0
    quiet = AsyncPostgresStore(pg_table, notify=False)
    assert not quiet.notify
    assert "notify=False" in repr(quiet)
    assert all("pg_notify" not in sql for sql in quiet.dialect._append_sql.values())
    with pytest.raises(ValueError, match="notify"):
        PostgresStore(pg_table, notify="no")  # type: ignore[arg-type]


def _listen_interrupted(api: str, config: StoreConfig, autocommit: bool) -> list[str]:
    """Run a processor on a caller's connection that is interrupted (a
    ``KeyboardInterrupt``; for asyncio a cancellation of its task) just
    after its LISTEN took effect: the statement in autocommit mode, else its
    COMMIT. Then, as :func:`_ran_on`, the channels of what the caller
    receives on that connection."""
    import warnings

    import psycopg

    from pupsourcing.aio import AsyncProcessor
    from pupsourcing.projection import Processor

    store = _pg_store(api, config)

    def notify_both() -> None:
        _append_elsewhere(config)
        with psycopg.connect(PG_DSN, autocommit=True) as other:
            other.execute("NOTIFY callers_own")

    armed = [True]  # the processor's LISTEN only, not the caller's

    def is_listen(query: Any) -> bool:
        if armed and isinstance(query, str) and query.startswith("LISTEN "):
            armed.clear()
            return True
        return False

    if api == "sync":

        class Interrupted(psycopg.Connection[Any]):
            listened = False

            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                cursor = super().execute(query, *args, **kwargs)
                if is_listen(query):
                    if self.autocommit:
                        raise KeyboardInterrupt
                    self.listened = True
                return cursor

            def commit(self) -> None:
                super().commit()
                if self.listened:
                    self.listened = False
                    raise KeyboardInterrupt

        with Interrupted.connect(PG_DSN, autocommit=autocommit) as conn:
            with pytest.raises(KeyboardInterrupt):
                Processor(conn, store, SLOW_POLL).run(Timed(), stop=threading.Event())
            conn.execute("LISTEN callers_own")
            if not autocommit:
                conn.commit()
            notify_both()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # notifies() with handlers left: a warning
                return [n.channel for n in conn.notifies(timeout=0.5)]

    async def cancelled() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    class AsyncInterrupted(psycopg.AsyncConnection[Any]):
        listened = False

        async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            cursor = await super().execute(query, *args, **kwargs)
            if is_listen(query):
                if self.autocommit:
                    await cancelled()
                else:
                    self.listened = True
            return cursor

        async def commit(self) -> None:
            await super().commit()
            if self.listened:
                self.listened = False
                await cancelled()

    async def main() -> list[str]:
        async with await AsyncInterrupted.connect(PG_DSN, autocommit=autocommit) as conn:
            task = asyncio.create_task(
                AsyncProcessor(conn, store, SLOW_POLL).run(Timed(), stop=asyncio.Event())
            )
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            await conn.execute("LISTEN callers_own")
            if not autocommit:
                await conn.commit()
            await asyncio.to_thread(notify_both)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return [n.channel async for n in conn.notifies(timeout=0.5)]

    return asyncio.run(main())


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transactions"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_postgres_processor_interrupted_as_its_listen_took_effect_leaves_no_listen(
    api: str, autocommit: bool, pg_table: StoreConfig
) -> None:
    """A cancellation (or ``KeyboardInterrupt``) that arrives after the
    processor's LISTEN took effect but before the listener returned gives
    the caller's connection back as it was: no LISTEN (the caller would get
    the processor's notifications, or have them pile up unread) and no
    notify handler of the processor's (one more per interrupted run)."""
    assert _listen_interrupted(api, pg_table, autocommit) == ["callers_own"]


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transactions"])
def test_postgres_async_processor_cancelled_anywhere_leaves_no_listen(
    autocommit: bool, pg_table: StoreConfig
) -> None:
    """Cancelled as each of its connection's ``execute`` and ``commit``
    calls returns in turn (every point of its start-up, LISTEN, and of
    UNLISTEN as it stops), a processor on a caller's connection gives it
    back with no LISTEN and no notify handler."""
    import psycopg

    from pupsourcing.aio import AsyncProcessor

    store = _pg_store("async", pg_table)
    left: list[tuple[int, list[Any], int]] = []
    calls = [0, 0]  # made, the one to cancel after

    async def counted() -> None:
        calls[0] += 1
        if calls[0] == calls[1]:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)

    class Counted(psycopg.AsyncConnection[Any]):
        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            cursor = await super().execute(*args, **kwargs)
            await counted()
            return cursor

        async def commit(self) -> None:
            await super().commit()
            await counted()

    async def main() -> int:
        async with await Counted.connect(PG_DSN, autocommit=autocommit) as conn:
            for cancel_after in range(1, 40):
                calls[:] = [0, cancel_after]
                stop = asyncio.Event()
                run = AsyncProcessor(conn, store, SLOW_POLL).run(Timed(), stop=stop)
                task = asyncio.create_task(run)
                done, _ = await asyncio.wait([task], timeout=1.0)
                if not done:  # idle before its `cancel_after`th call: stopping makes more
                    stop.set()
                    await asyncio.wait([task])
                calls[1] = 0
                if not task.cancelled():
                    return cancel_after  # it stopped before its `cancel_after`th call
                cursor = await conn.execute("SELECT pg_listening_channels()")
                channels = await cursor.fetchall()
                if not autocommit:
                    await conn.rollback()
                handlers = len(conn._notify_handlers)  # psycopg's own list
                if channels or handlers:
                    left.append((cancel_after, channels, handlers))
                    conn._notify_handlers.clear()
                    await conn.execute("UNLISTEN *")
                    if not autocommit:
                        await conn.commit()
        raise AssertionError("the processor was cancelled at 40 calls and more")

    idle_after = asyncio.run(main())
    assert idle_after > 4  # its LISTEN and UNLISTEN were among the calls
    assert left == []


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_refused_listen_is_one_warning_line_naming_the_projection(
    api: str, pg_table: StoreConfig, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The server refuses the LISTEN (a real error, with PostgreSQL's quoted
    SQL on lines of its own): one warning, on one line, that names the
    projection; the processor polls and handles what is appended."""
    import psycopg

    from pupsourcing.adapters.postgres import _listen
    from pupsourcing.aio import AsyncProcessor
    from pupsourcing.projection import Processor

    counting_init = _listen._Counting.__init__

    def refused(self: Any, channel: str, events_table: str) -> None:
        counting_init(self, channel, events_table)
        self._sql = f'LISTEN "{channel}" refused'  # a syntax error

    monkeypatch.setattr(_listen._Counting, "__init__", refused)
    projection = Timed()
    store = _pg_store(api, pg_table)
    config = ProcessorConfig(poll_interval=0.05)
    caplog.set_level("WARNING", logger="pupsourcing")
    if api == "sync":
        with closing(psycopg.connect(PG_DSN)) as conn:
            stop = threading.Event()
            thread = threading.Thread(
                target=Processor(conn, store, config).run, args=(projection,), kwargs={"stop": stop}
            )
            thread.start()
            try:
                refused_then_polls(projection, caplog, pg_table)
            finally:
                stop.set()
                thread.join(10)
    else:

        async def main() -> None:
            conn = await psycopg.AsyncConnection.connect(PG_DSN)
            stop = asyncio.Event()
            task = asyncio.create_task(
                AsyncProcessor(conn, store, config).run(projection, stop=stop)
            )
            try:
                await asyncio.to_thread(refused_then_polls, projection, caplog, pg_table)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
                await conn.close()

        asyncio.run(main())
    refusals = [r.getMessage() for r in caplog.records if "cannot LISTEN" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert refusals[0].startswith("projection timed cannot LISTEN for appends (syntax error")
    assert "\n" not in refusals[0], refusals[0]
    assert "^" not in refusals[0], refusals[0]


def refused_then_polls(projection: Timed, caplog: Any, config: StoreConfig) -> None:
    """Wait for the processor's LISTEN to be refused, then for an append by
    another connection to be handled (found by polling)."""
    deadline = time.monotonic() + 10
    while not any("cannot LISTEN" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the LISTEN was never refused"
        time.sleep(0.02)
    assert projection.wait_for(_append_elsewhere(config), 10.0) is not None
