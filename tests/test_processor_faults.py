"""A projection's own writes through ``tx`` meet a database fault.

When the handler's read-model write fails because the connection was lost, a
lock wait timed out or a deadlock was chosen, the database failed, not the
projection: the processor rolls the batch back and retries (or reconnects),
exactly as for its own statements, instead of stopping with
:class:`ProjectionError`. The read model ends up exact.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any

import pytest

from conftest import Backend
from helpers import LogRecords, events, query
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.projection import Processor, ProcessorConfig

LOCK_TIMEOUT = {
    "postgres": "SET lock_timeout = '{seconds}s'",
    "mysql": "SET SESSION innodb_lock_wait_timeout = {seconds}",
}


def own_session(backend: Backend, conn: Any) -> int:
    sql = "SELECT pg_backend_pid()" if backend.name == "postgres" else "SELECT CONNECTION_ID()"
    return int(query(conn, sql)[0][0])


def kill_session(backend: Backend, session: int) -> None:
    admin = backend.connect()
    try:
        if backend.name == "postgres":
            query(admin, "SELECT pg_terminate_backend(%s)", (session,))
        else:
            query(admin, f"KILL {session}")
        admin.commit()
    finally:
        admin.close()


class Counting:
    """One row per event and a running count: a second application of an
    event breaks the key, a lost one shows in the count."""

    name = "counting"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.kill_at: int | None = None
        self.block_at: int | None = None
        self.blocker: Any = None

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        if event.global_position == self.kill_at:
            self.kill_at = None
            kill_session(self.backend, own_session(self.backend, tx))
        if event.global_position == self.block_at:
            # Another transaction takes the row this write needs, for longer
            # than the processor's lock time-out. (Taken here, not before the
            # run: on MySQL an open writer would hold the safe horizon back.)
            self.block_at = None
            query(self.blocker, "UPDATE totals SET n = n WHERE id = 1")
            threading.Timer(1.5, self.blocker.rollback).start()
        query(tx, "UPDATE totals SET n = n + 1 WHERE id = 1")
        mark = "?" if self.backend.name == "sqlite" else "%s"
        query(tx, f"INSERT INTO applied (position) VALUES ({mark})", (event.global_position,))


def setup(backend: Backend, count: int) -> list[int]:
    conn = backend.connect()
    query(conn, "CREATE TABLE applied (position BIGINT PRIMARY KEY)")
    query(conn, "CREATE TABLE totals (id INT PRIMARY KEY, n BIGINT NOT NULL)")
    query(conn, "INSERT INTO totals (id, n) VALUES (1, 0)")
    positions = []
    for a in range(count // 10):
        result = backend.store.append(conn, ExpectedVersion.any(), events(10, f"agg-{a}"))
        positions += result.global_positions
    conn.commit()
    conn.close()
    return positions


def read_model(backend: Backend) -> tuple[list[int], int]:
    conn = backend.connect()
    try:
        applied = [int(r[0]) for r in query(conn, "SELECT position FROM applied ORDER BY 1")]
        return applied, int(query(conn, "SELECT n FROM totals WHERE id = 1")[0][0])
    finally:
        conn.close()


def assert_retried_not_failed(log: LogRecords, level: int, says: str) -> None:
    assert any(says in m for m in log.messages(level)), log.messages(level)
    assert not any("failed at global position" in m for m in log.messages(logging.ERROR))


@pytest.mark.both_apis  # the blocking and the asyncio processor, see conftest
def test_a_connection_lost_inside_the_handler_is_a_reconnect(server: Backend) -> None:
    positions = setup(server, 60)
    projection = Counting(server)
    projection.kill_at = positions[25]  # in the middle of the second batch
    log = LogRecords(f"pupsourcing.test.handler_lost.{server.name}.{server.api}")
    config = ProcessorConfig(20, logger=log.logger)
    with server.Processor(server.connect, server.store, config) as p:
        assert p.catch_up(projection) >= 60
    assert projection.kill_at is None  # the connection really was killed
    assert read_model(server) == (positions, 60)
    assert_retried_not_failed(log, logging.ERROR, "lost its connection")


def test_a_lock_wait_timeout_inside_the_handler_is_retried(server: Backend) -> None:
    positions = setup(server, 30)
    projection = Counting(server)
    projection.blocker = server.connection()
    # Never wait for the processor (whose batch has not touched the row yet).
    query(projection.blocker, LOCK_TIMEOUT[server.name].format(seconds=5))
    projection.block_at = positions[0]  # first of the batch: the row is still free

    def connect() -> Any:
        conn = server.connect()
        query(conn, LOCK_TIMEOUT[server.name].format(seconds=1))
        conn.commit()
        return conn

    log = LogRecords(f"pupsourcing.test.handler_lock.{server.name}")
    with Processor(connect, server.store, ProcessorConfig(logger=log.logger)) as processor:
        assert processor.catch_up(projection) >= 30
    assert projection.block_at is None  # the row really was locked
    assert read_model(server) == (positions, 30)
    assert_retried_not_failed(log, logging.WARNING, "retrying")


def test_a_handler_that_fails_by_itself_still_stops_the_processor(server: Backend) -> None:
    """The other side: a handler's own SQL error is a projection failure."""
    setup(server, 10)

    class Broken:
        name = "broken"

        def handle(self, event: PersistedEvent, tx: Any) -> None:
            query(tx, "INSERT INTO no_such_table (x) VALUES (1)")

    with Processor(server.connect, server.store) as processor, pytest.raises(ProjectionError):
        processor.catch_up(Broken())
    conn = server.connect()
    try:
        assert server.store.get_checkpoint(conn, "broken") == 0
    finally:
        conn.close()


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt, SystemExit or a thread's asynchronous
    exception: not an ``Exception``, so nothing on the way may swallow it."""


@pytest.mark.parametrize("interruption", [Interrupted, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("own_connection", [True, False], ids=["factory", "callers"])
def test_an_interrupted_batch_is_rolled_back_and_redone_once(
    backend: Backend, own_connection: bool, interruption: type[BaseException]
) -> None:
    """A ``BaseException`` from ``handle`` mid-batch leaves no open
    transaction behind: running the same processor again applies every event
    exactly once (one row per position; a partial batch committed along with
    its redo would break the key or the count)."""
    positions = setup(backend, 20)
    projection = Counting(backend)
    interrupt_at = positions[14]  # the middle of the second batch of ten

    class Interrupting(Counting):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            if event.global_position == interrupt_at:
                raise interruption("stop right now")

    conn = None if own_connection else backend.connect()
    db: Any = backend.connect if conn is None else conn
    with Processor(db, backend.store, ProcessorConfig(batch_size=10)) as processor:
        with pytest.raises(interruption):
            processor.catch_up(Interrupting(backend))
        if conn is None:
            assert processor._conn is None  # its own connection: closed, not reused
        assert read_model(backend) == (positions[:10], 10)  # only the first batch
        assert processor.catch_up(projection) == 10
    assert read_model(backend) == (positions, 20)
    if conn is not None:
        assert query(conn, "SELECT 1") == [(1,)]  # rolled back, still usable
        conn.close()


def test_a_processor_closed_from_another_thread_mid_batch_closes_after_it(
    backend: Backend,
) -> None:
    """What a caller's clean-up does when a second Ctrl-C cut ``Runner.run``'s
    wait short: it closes the processors while their threads finish their
    batches. The batch commits, and the connection is closed when the run
    ends (it was closed under the batch, which then reconnected and left
    the new connection open; on SQLite the process could crash)."""
    positions = setup(backend, 10)
    entered, leave = threading.Event(), threading.Event()

    class Blocking(Counting):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            entered.set()
            leave.wait(10)

    processor = Processor(backend.connect, backend.store, ProcessorConfig(batch_size=10))
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            processor.run(Blocking(backend), stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(10)
    conn = processor._conn
    processor.close()  # the batch is in its handler
    stop.set()
    leave.set()
    thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert read_model(backend) == (positions, 10)
    assert backend.checkpoints() == {"counting": positions[-1]}
    assert processor._conn is None  # closed, not reopened
    assert closed(conn)


def closed(conn: Any) -> bool:
    """Whether a DB-API connection of any of the drivers is closed."""
    if isinstance(conn, sqlite3.Connection):
        try:
            conn.total_changes  # noqa: B018 (raises on a closed connection)
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(conn.closed) if hasattr(conn, "broken") else not conn.open


def test_two_processors_on_one_projection_back_off_and_warn_once(backend: Backend) -> None:
    """The same projection run twice by mistake: the checkpoint's
    compare-and-set keeps the read model exact, and the processor that lost
    a batch waits before it tries again and says so once per interval
    (it used to retry at once and log hundreds of warnings a second)."""
    setup(backend, 600)  # about 2 s of batches when idle: the two run side by side

    class Slow(Counting):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            query(tx, "UPDATE totals SET n = n + 1 WHERE id = 1")  # no key: a redo would count
            time.sleep(0.003)  # both processors' batches overlap

    log = LogRecords(f"pupsourcing.test.twice.{backend.name}")
    config = ProcessorConfig(batch_size=10, poll_interval=0.01, logger=log.logger)
    stop = threading.Event()
    processors = [Processor(backend.connect, backend.store, config) for _ in range(2)]
    threads = [
        threading.Thread(target=p.run, args=(Slow(backend),), kwargs={"stop": stop})
        for p in processors
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 25  # within one 30 s warning interval
    while read_model(backend)[1] < 600 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(15)
    for p in processors:
        p.close()
    _, total = read_model(backend)
    assert total == 600  # every event counted once
    warnings = [m for m in log.messages(logging.WARNING) if "moved by another processor" in m]
    assert len(warnings) <= 2, warnings  # one per processor that lost, per 30 s
    if backend.name != "sqlite":  # there the loser waits for the write lock instead
        assert warnings, "the two processors never raced"


def test_a_refused_login_stops_the_runner_instead_of_reconnecting(server: Backend) -> None:
    """A connection factory whose login the server refuses (no such role,
    a wrong password) is no lost connection: the processor raises it, and
    the runner stops the other projections and raises it, as for any
    failure. (On PostgreSQL it was retried for ever, the runner never
    ending, while MySQL raised it.)"""
    from pupsourcing.runner import ProjectionRunner, Runner
    from pupsourcing.urls import database

    setup(server, 10)
    if server.name == "postgres":
        refused_url = server.url.replace("://postgres@", "://no_such_role_7@", 1)
        says = 'role "no_such_role_7" does not exist'
    else:
        scheme = "mysql+mysqldb://" if server.driver == "MySQLdb" else "mysql://"
        refused_url = server.url.replace("mysql://root@", f"{scheme}root:wrong-pw@", 1)
        says = "Access denied"
    assert refused_url != server.url
    refused = database(refused_url, server.store.config)
    config = ProcessorConfig(poll_interval=0.01)
    processors = [
        Processor(server.connect, server.store, config),
        Processor(refused.connect, refused.store, config),
    ]

    class Other(Counting):
        name = "other"

    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            Runner().run(
                [
                    ProjectionRunner(Counting(server), processors[0]),
                    ProjectionRunner(Other(server), processors[1]),
                ],
                stop=stop,
            )
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(15)
    stop.set()
    thread.join(15)
    for p in processors:
        p.close()
    assert len(raised) == 1, "the runner did not end with the refused login"
    assert says in str(raised[0])
