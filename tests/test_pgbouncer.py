"""PostgreSQL behind PgBouncer in transaction pooling mode, a common
deployment: each transaction of a client may run on a different server
connection, so nothing may rely on session state (``SET SESSION``,
``LISTEN``, session advisory locks, prepared statements).

A private PgBouncer (``private_servers.PrivatePgBouncer``) per test, in front
of the shared server; the store's schema is the search path of its server
connections (PgBouncer refuses the ``options`` startup parameter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import PG_DATABASE, Backend, close_backend, postgres_backend, require, unavailable
from helpers import LogRecords
from pupsourcing.store.config import StoreConfig

psycopg = require("psycopg")


@dataclass
class Bounced:
    """A store's schema on the shared server, reached through PgBouncer."""

    direct: Backend
    """The same schema, connected to directly."""
    bouncer: Any
    dsn: str
    store: Any
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def connect(self, **kwargs: Any) -> Any:
        """A connection through PgBouncer, without prepared statements (which
        PgBouncer 1.18 cannot keep in transaction mode)."""
        return psycopg.connect(self.dsn, prepare_threshold=None, **kwargs)

    async def connect_async(self, **kwargs: Any) -> Any:
        return await psycopg.AsyncConnection.connect(self.dsn, prepare_threshold=None, **kwargs)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.bouncer.port}/pgb"


@pytest.fixture
def bounced() -> Iterator[Callable[..., Bounced]]:
    """Makes a store behind a PgBouncer of its own (transaction pooling
    unless ``pool_mode`` says otherwise): ``pool_size`` server connections,
    each with ``default_transaction_isolation`` (as a role-wide setting
    would make it) when given."""
    from private_servers import PrivatePgBouncer, ServerUnavailable

    made: list[Bounced] = []

    def make(
        pool_size: int = 4,
        isolation: str | None = None,
        config: StoreConfig | None = None,
        pool_mode: str = "transaction",
    ) -> Bounced:
        direct = postgres_backend(config or StoreConfig())
        query = f"SET search_path TO {direct.schema}"
        if isolation is not None:
            query += f"; SET default_transaction_isolation = '{isolation}'"
        settings = {"dbname": PG_DATABASE, "pool_size": str(pool_size), "connect_query": query}
        try:
            bouncer = PrivatePgBouncer({"pgb": settings}, pool_mode=pool_mode)
        except ServerUnavailable as exc:
            close_backend(direct)
            unavailable("a private PgBouncer", exc)
            raise
        b = Bounced(direct, bouncer, bouncer.dsn("pgb"), direct.store)
        made.append(b)
        return b

    yield make
    for b in made:
        for cleanup in reversed(b.cleanups):
            cleanup()
        b.bouncer.destroy()
        close_backend(b.direct)


class _Idle:
    name = "iso"

    def handle(self, event: Any, tx: Any) -> None:
        pass


def _wait(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _append(b: Bounced, aggregate_id: str) -> tuple[int, float]:
    """One event appended and committed through PgBouncer: its position and
    when the commit returned."""
    from helpers import event
    from pupsourcing import ExpectedVersion

    conn = b.connect()
    try:
        result = b.store.append(conn, ExpectedVersion.any(), [event(aggregate_id)])
        conn.commit()
        return int(result.global_positions[0]), time.monotonic()
    finally:
        conn.close()


def test_a_claiming_runner_leaks_no_isolation_level_to_other_clients(
    bounced: Callable[..., Bounced],
) -> None:
    """The lease loop's READ COMMITTED is its transactions' own: on the one
    server connection PgBouncer has, another client's transactions keep the
    role's REPEATABLE READ (a SET SESSION would have changed them too)."""
    from pupsourcing.projection import ClaimingRunner, ProcessorConfig

    b = bounced(pool_size=1, isolation="repeatable read")
    records = LogRecords("pgb-leak")
    config = ProcessorConfig(total_partitions=1, poll_interval=0.05, logger=records.logger)
    runner = ClaimingRunner(b.connect, b.store, config, lease_ttl=3, owner="a")
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(_Idle(),), kwargs={"stop": stop})
    thread.start()
    try:
        assert _wait(lambda: runner.held() == {"iso": [0]})
        other = b.connect(autocommit=True)
        try:
            for _ in range(5):
                level = other.execute("SHOW transaction_isolation").fetchone()
                assert level == ("repeatable read",)
                time.sleep(0.05)
        finally:
            other.close()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert records.messages(logging.WARNING) == []


@pytest.mark.parametrize("autocommit", [False, True])
def test_every_lease_transaction_is_read_committed(
    bounced: Callable[..., Bounced], autocommit: bool
) -> None:
    """The server connection the runner set its level on is replaced (as
    PgBouncer does after server_lifetime): a renewal that waited for its
    lease row, which another process changed, still reads the row again
    instead of failing with a serialization error (taken for a lost
    connection). Also on autocommit connections."""
    from pupsourcing.projection import ClaimingRunner, ProcessorConfig

    b = bounced(pool_size=1, isolation="repeatable read")
    records = LogRecords(f"pgb-rc-{autocommit}")
    config = ProcessorConfig(total_partitions=1, poll_interval=0.05, logger=records.logger)
    runner = ClaimingRunner(
        lambda: b.connect(autocommit=autocommit), b.store, config, lease_ttl=1.5, owner="a"
    )
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(_Idle(),), kwargs={"stop": stop})
    thread.start()
    holder = b.direct.connection()
    try:
        assert _wait(lambda: runner.held() == {"iso": [0]})
        b.bouncer.admin("RECONNECT pgb")  # new server connections, at the role's level
        cursor = holder.cursor()
        cursor.execute(  # locks partition 0's row: the next renewal waits for it
            "UPDATE projection_leases SET heartbeat = heartbeat + 1 "
            "WHERE projection_name = 'iso' AND partition_key = 0"
        )
        cursor.close()
        blocked = (  # a renewal (every lease_ttl / 3) waits for the row
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE {holder.info.backend_pid} = ANY(pg_blocking_pids(pid))"
        )
        # (Committed at once: the wait gives up after 0.2 x lease_ttl.)
        assert _wait(lambda: int(b.direct.scalar(blocked)) > 0, timeout=2)
        holder.commit()
        time.sleep(0.6)
        assert runner.held() == {"iso": [0]}
    finally:
        stop.set()
        thread.join(timeout=10)
    assert records.messages(logging.WARNING) == []


def test_create_indexes_refuses_a_pooled_connection(
    bounced: Callable[..., Bounced], tmp_path: Any
) -> None:
    """``--create-indexes`` builds under a session advisory lock, which
    transaction pooling would take on one server connection and release
    (or leave held forever) on another: refused, with what to do instead,
    and no lock left behind."""
    import os
    import subprocess
    import sys

    from cli_helpers import cli_env

    b = bounced(pool_size=2)
    (tmp_path / "pgb_projection.py").write_text(
        "class P:\n    name = 'p'\n\n    def handle(self, event, tx):\n        pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pupsourcing", "projections", "run", "--db", b.url,
         "--partitions", "2", "--create-indexes", "--no-progress", "pgb_projection:P"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=cli_env(PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path])),
    )  # fmt: skip
    assert result.returncode != 0, result.stderr
    assert "pooler" in result.stderr, result.stderr
    assert "direct connection" in result.stderr
    built = "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_events_part2_%'"
    assert b.direct.scalar(built) == 0


def test_appends_reads_and_processors_work_through_transaction_pooling(
    bounced: Callable[..., Bounced],
) -> None:
    """Blocking and asyncio appends and reads, a processor's catch_up and
    run: every event is handled once, and run finds appends (at its polls:
    LISTEN cannot work here) without hanging."""
    import asyncio

    from helpers import event
    from pupsourcing import ExpectedVersion
    from pupsourcing.aio import AsyncPostgresStore
    from pupsourcing.projection import Processor, ProcessorConfig

    b = bounced(pool_size=2)
    conn = b.connect()
    for i in range(10):
        b.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
        conn.commit()
    auto = b.connect(autocommit=True)
    b.store.append(auto, ExpectedVersion.any(), [event("auto")])
    auto.close()

    async def async_append() -> int:
        store = AsyncPostgresStore(b.store.config)
        aconn = await b.connect_async()
        try:
            await store.append(aconn, ExpectedVersion.any(), [event("async")])
            await aconn.commit()
            return len(await store.read_events(aconn, 0, 100))
        finally:
            await aconn.close()

    assert asyncio.run(async_append()) == 12
    seen: list[int] = []

    class Seen:
        name = "seen"

        def handle(self, e: Any, tx: Any) -> None:
            seen.append(e.global_position)

    processor = Processor(b.connect, b.store, ProcessorConfig(poll_interval=0.2))
    try:
        assert processor.catch_up(Seen()) == 12
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(Seen(),), kwargs={"stop": stop})
        thread.start()
        try:
            for i in range(5):
                b.store.append(conn, ExpectedVersion.any(), [event(f"late-{i}")])
                conn.commit()
            assert _wait(lambda: len(seen) == 17)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        processor.close()
        conn.close()
    assert seen == list(range(1, 18))


def test_a_url_turns_prepared_statements_off_for_the_cli(
    bounced: Callable[..., Bounced],
) -> None:
    """``?prepare_threshold=none`` in a ``postgresql://`` URL (what the CLI
    and ``pupsourcing.urls.database`` take) reaches psycopg: statements run
    many times through transaction pooling are never prepared."""
    from helpers import event
    from pupsourcing import ExpectedVersion
    from pupsourcing.urls import database

    b = bounced(pool_size=2)
    db = database(f"{b.url}?prepare_threshold=none", b.store.config)
    conn = db.connect()
    try:
        assert conn.prepare_threshold is None
        for i in range(12):  # past psycopg's default threshold of 5
            db.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}")])
            conn.commit()
            assert len(db.store.read_events(conn, 0, 100)) == i + 1
            conn.commit()
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert prepared == (0,)
    finally:
        conn.close()


@pytest.fixture
def js() -> Iterator[Any]:
    from nats_helpers import jetstream

    yield from jetstream()


def test_a_relay_publishes_each_event_once_through_transaction_pooling(
    bounced: Callable[..., Bounced], js: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``NatsRelay`` behind PgBouncer: catch_up, then run while events are
    appended (found at its polls), with a second copy standing by; every
    event is in the stream once, in order, and the checkpoint at the head."""
    import asyncio

    from pupsourcing import Event, ExpectedVersion
    from pupsourcing.aio import AsyncPostgresStore
    from pupsourcing.relay import NatsRelay

    stream, prefix = js.new_stream(duplicate_window=0.5)
    b = bounced(pool_size=2)
    conn = b.connect()

    def append(count: int, tag: str) -> None:
        for i in range(count):
            events = [Event("Shop", "Order", f"{tag}-{i % 7}", "Placed", b"{}")]
            b.store.append(conn, ExpectedVersion.any(), events)
            conn.commit()

    def head() -> int:
        value = b.store.head_position(conn)
        conn.commit()
        return int(value)

    def relay() -> NatsRelay:
        return NatsRelay(
            b.connect_async,
            AsyncPostgresStore(b.store.config),
            stream=stream,
            servers=js.url,
            subject_prefix=prefix,
            name="pgb",
            batch_size=50,
            poll_interval=0.05,
            lease_ttl=2.0,
        )

    async def scenario() -> int:
        async with relay() as first:
            relayed = await first.catch_up()
        stop = asyncio.Event()
        async with relay() as active, relay() as standby:
            running = asyncio.create_task(active.run(stop=stop))
            await asyncio.sleep(0.3)
            waiting = asyncio.create_task(standby.run(stop=stop))
            await asyncio.to_thread(append, 100, "late")
            target = await asyncio.to_thread(head)
            deadline = time.monotonic() + 30
            while b.direct.checkpoints().get("relay_pgb") != target:
                assert time.monotonic() < deadline, "not relayed"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.6)  # past the duplicate window
            stop.set()
            await asyncio.gather(running, waiting)
        return relayed

    append(300, "early")
    with caplog.at_level(logging.INFO, logger="pupsourcing.relay"):
        assert asyncio.run(scenario()) == 300
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("standing by" in r.getMessage() for r in caplog.records)
    positions = [m.position for m in js.messages(stream)]
    assert positions == list(range(1, 401))
    assert b.direct.checkpoints()["relay_pgb"] == 400
    conn.close()


# -- push wake-ups through a pooler --------------------------------------------


class _Timed:
    """Records when each event was handled, by position."""

    name = "timed"

    def __init__(self) -> None:
        self.handled: dict[int, float] = {}

    def handle(self, e: Any, tx: Any) -> None:
        self.handled[e.global_position] = time.monotonic()


class _AsyncTimed(_Timed):
    async def handle(self, e: Any, tx: Any) -> None:  # type: ignore[override]
        self.handled[e.global_position] = time.monotonic()


def _run_processor(
    b: Bounced,
    projection: _Timed,
    records: LogRecords,
    poll_interval: float,
    during: Callable[[], None],
) -> None:
    """Run a processor of ``projection`` (an ``_AsyncTimed``: the asyncio
    one) through ``b`` (a connection factory), with ``poll_interval`` and
    ``records``' logger, calling ``during()`` (in a thread) while it runs."""
    import asyncio

    from pupsourcing.aio import AsyncPostgresStore, AsyncProcessor
    from pupsourcing.projection import Processor, ProcessorConfig

    config = ProcessorConfig(poll_interval=poll_interval, logger=records.logger)
    if not isinstance(projection, _AsyncTimed):
        processor = Processor(b.connect, b.store, config)
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
        thread.start()
        try:
            during()
        finally:
            stop.set()
            thread.join(timeout=15)
            processor.close()
        assert not thread.is_alive()
        return

    async def main() -> None:
        processor = AsyncProcessor(b.connect_async, AsyncPostgresStore(b.store.config), config)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(projection, stop=stop))
        try:
            await asyncio.to_thread(during)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await processor.close()

    asyncio.run(main())


def _push_warnings(records: LogRecords) -> list[str]:
    return [m for m in records.messages(logging.WARNING) if "push" in m]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_processor_behind_transaction_pooling_warns_once_that_push_is_not_delivered(
    bounced: Callable[..., Bounced], api: str
) -> None:
    """LISTEN through transaction pooling succeeds, but no notification
    reaches the processor's connection: it says so once, naming the
    projection and its poll interval, without holding back its first batch;
    then appends made in its own process wake it, as on MySQL."""
    b = bounced(pool_size=4)
    records = LogRecords(f"pgb-push-{api}")
    first, _ = _append(b, "first")
    projection = _AsyncTimed() if api == "async" else _Timed()
    started = time.monotonic()

    after: list[tuple[int, float]] = []

    def during() -> None:
        assert _wait(lambda: first in projection.handled, timeout=10)
        assert _wait(lambda: bool(_push_warnings(records)), timeout=10)
        after.append(_append(b, "after"))  # through a store of this process
        time.sleep(1.5)  # (no second warning)

    _run_processor(b, projection, records, 5.0, during)
    assert projection.handled[first] - started < 2.0, "the first batch waited"
    ((position, committed),) = after  # woken as on MySQL, not found by the 5 s poll
    assert position in projection.handled, "an append of this process was not handled"
    assert projection.handled[position] - committed < 1.0
    (warning,) = _push_warnings(records)
    assert "projection timed" in warning, warning
    assert "not delivered" in warning, warning
    assert "every 5.0 s (poll_interval)" in warning, warning
    assert "transaction" in warning, warning


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_processor_through_session_pooling_is_woken_without_a_warning(
    bounced: Callable[..., Bounced], api: str
) -> None:
    """Session pooling keeps the processor's server connection its own:
    notifications arrive (an append by another client wakes the idle
    processor at once), and nothing is said about push."""
    b = bounced(pool_size=4, pool_mode="session")
    records = LogRecords(f"pgb-session-{api}")
    projection = _AsyncTimed() if api == "async" else _Timed()
    appended: list[tuple[int, float]] = []

    def during() -> None:
        time.sleep(3.0)  # idle, and past the probe's bound
        appended.append(_append(b, "later"))
        time.sleep(1.0)

    _run_processor(b, projection, records, 5.0, during)
    ((position, committed),) = appended
    assert position in projection.handled, "the append was not handled"
    assert projection.handled[position] - committed < 0.5
    assert _push_warnings(records) == []


# -- runners through transaction pooling ---------------------------------------


class _Recorded:
    """Writes each event it handles to ``pgb_seen`` through ``tx``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, e: Any, tx: Any) -> None:
        tx.execute("INSERT INTO pgb_seen VALUES (%s, %s)", (self.name, e.global_position))


class _AsyncRecorded(_Recorded):
    async def handle(self, e: Any, tx: Any) -> None:  # type: ignore[override]
        await tx.execute("INSERT INTO pgb_seen VALUES (%s, %s)", (self.name, e.global_position))


RUNNERS = ["Runner", "AsyncRunner", "ClaimingRunner", "AsyncClaimingRunner"]


def _run_runner(b: Bounced, kind: str, names: list[str], during: Callable[[], None]) -> Any:
    """Run projections ``names`` with a runner of ``kind`` through ``b`` while
    ``during()`` runs (in a thread); the claiming runner, if it is one."""
    import asyncio

    from pupsourcing.aio import AsyncClaimingRunner, AsyncPostgresStore, AsyncProcessor, AsyncRunner
    from pupsourcing.projection import ClaimingRunner, Processor, ProcessorConfig
    from pupsourcing.runner import ProjectionRunner, Runner

    config = ProcessorConfig(poll_interval=0.05)
    claiming = ProcessorConfig(total_partitions=2, poll_interval=0.05)
    astore = AsyncPostgresStore(b.store.config)
    if kind in ("Runner", "ClaimingRunner"):
        stop = threading.Event()
        runner: Any
        if kind == "Runner":
            processors = [Processor(b.connect, b.store, config) for _ in names]
            pairs = [
                ProjectionRunner(_Recorded(n), p) for n, p in zip(names, processors, strict=True)
            ]
            target: Any = lambda: Runner().run(pairs, stop=stop)  # noqa: E731
        else:
            runner = ClaimingRunner(b.connect, b.store, claiming, lease_ttl=3, owner="pgb")
            target = lambda: runner.run([_Recorded(n) for n in names], stop=stop)  # noqa: E731
        failures: list[BaseException] = []

        def work() -> None:
            try:
                target()
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        try:
            during()
        finally:
            stop.set()
            thread.join(timeout=20)
            if kind == "Runner":
                for p in processors:
                    p.close()
        assert not thread.is_alive(), "the runner did not stop"
        assert failures == []
        return runner if kind == "ClaimingRunner" else None

    async def main() -> Any:
        stop = asyncio.Event()
        if kind == "AsyncRunner":
            aprocessors = [AsyncProcessor(b.connect_async, astore, config) for _ in names]
            pairs = [
                ProjectionRunner(_AsyncRecorded(n), p)
                for n, p in zip(names, aprocessors, strict=True)
            ]
            run = AsyncRunner().run(pairs, stop=stop)  # type: ignore[arg-type]
            arunner = None
        else:
            arunner = AsyncClaimingRunner(
                b.connect_async, astore, claiming, lease_ttl=3, owner="pgb"
            )
            run = arunner.run([_AsyncRecorded(n) for n in names], stop=stop)
        task = asyncio.create_task(run)
        try:
            await asyncio.to_thread(during)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            if kind == "AsyncRunner":
                for p in aprocessors:
                    await p.close()
        return arunner

    return asyncio.run(main())


@pytest.mark.parametrize("kind", RUNNERS)
def test_runners_run_projections_through_transaction_pooling(
    bounced: Callable[..., Bounced], kind: str
) -> None:
    """Runner, AsyncRunner and both claiming runners through PgBouncer in
    transaction pooling: every event, appended before and while they run,
    is handled once by each projection; the checkpoints end at the last
    event; the claiming runners release their leases when they stop."""
    b = bounced(pool_size=4)
    setup = b.direct.connection()
    setup.execute("CREATE TABLE pgb_seen (projection TEXT NOT NULL, position BIGINT NOT NULL)")
    setup.commit()
    for i in range(20):
        _append(b, f"before-{i}")
    names = ["one", "two"]

    def seen() -> int:
        count = setup.execute("SELECT count(DISTINCT (projection, position)) FROM pgb_seen")
        (n,) = count.fetchone()
        setup.commit()
        return int(n)

    def during() -> None:
        for i in range(10):
            _append(b, f"during-{i}")
            time.sleep(0.05)
        assert _wait(lambda: seen() == 60, timeout=30), seen()

    runner = _run_runner(b, kind, names, during)
    rows = setup.execute("SELECT projection, position, count(*) FROM pgb_seen GROUP BY 1, 2")
    counts = {(name, position): n for name, position, n in rows.fetchall()}
    setup.commit()
    assert set(counts) == {(n, p) for n in names for p in range(1, 31)}
    assert set(counts.values()) == {1}, "an event was handled twice"
    checkpoints = b.direct.checkpoints()
    if runner is None:
        assert checkpoints == dict.fromkeys(names, 30)
    else:
        assert checkpoints == {f"{n}_p{k}": 30 for n in names for k in (0, 1)}
        for name in names:
            held = b.direct.store.list_leases(setup, name)
            setup.commit()
            assert [lease.owner for lease in held] == ["", ""], held
        assert runner.held() == {}


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_processor_that_reconnects_behind_transaction_pooling_warns_once(
    bounced: Callable[..., Bounced], api: str
) -> None:
    """The connection is lost after the warning (PgBouncer's KILL): the new
    one, through the same pooler, neither listens (each LISTEN stays on a
    pooled server connection) nor probes nor warns again (a warning per
    reconnection would repeat in a log for as long as the pooler drops
    connections), and finds appends at its polls."""
    from pupsourcing.projection._waiter import PROBE_WAIT

    b = bounced(pool_size=4)
    records = LogRecords(f"pgb-again-{api}")
    projection = _AsyncTimed() if api == "async" else _Timed()
    after: list[int] = []

    def during() -> None:
        assert _wait(lambda: bool(_push_warnings(records)), timeout=10)
        b.bouncer.admin("KILL pgb")
        b.bouncer.admin("RESUME pgb")
        after.append(_append(b, "after")[0])
        assert _wait(lambda: after[0] in projection.handled, timeout=20)
        time.sleep(PROBE_WAIT + 1.5)  # past the new probe's bound

    _run_processor(b, projection, records, 0.5, during)
    assert len(_push_warnings(records)) == 1, _push_warnings(records)
    probes = [r for r in records.records if "not delivered" in r.getMessage()]
    assert len(probes) == 1, "the new connection was probed again"


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("run", range(3))
def test_a_busy_processor_behind_transaction_pooling_still_warns(
    bounced: Callable[..., Bounced], api: str, run: int
) -> None:
    """A processor polling often is often in a transaction on the listening
    server connection, and the probe then arrives with a query's reply, as
    transaction pooling delivers by chance: that is no delivery to an idle
    processor. It probes again, and warns."""
    b = bounced(pool_size=2)
    records = LogRecords(f"pgb-busy-{api}-{run}")
    projection = _AsyncTimed() if api == "async" else _Timed()

    def during() -> None:
        for i in range(40):  # a steady stream of batches
            _append(b, f"busy-{i}")
            time.sleep(0.05)
        _wait(lambda: bool(_push_warnings(records)), timeout=8)

    _run_processor(b, projection, records, 0.01, during)
    assert len(_push_warnings(records)) == 1, records.messages(logging.DEBUG)
