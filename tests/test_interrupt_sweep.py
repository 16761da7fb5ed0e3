"""Interruption sweeps of the blocking API, the twins of
``test_cancel_sweep``: each operation is interrupted by a
:class:`KeyboardInterrupt` (what Ctrl-C and the CLI's signal handling raise
in the main thread) at its first statement, then at its second, and so on
until it completes, on real PostgreSQL, MariaDB (PyMySQL and mysqlclient)
and SQLite. After every interruption the very :class:`KeyboardInterrupt`
raised has reached the caller, the caller's connection is as the docs say
(usable, or in a transaction to roll back), nothing partial became visible
and no lock or lease blocks another connection.

A statement is interrupted in one of two ways: ``"before"`` it is sent, or
``"sent"``: once the driver has run it, before the store sees its result
(where Ctrl-C lands with sqlite3 and mysqlclient, which finish the call
they are in first; psycopg cancels the query instead).
"""

from __future__ import annotations

import _thread
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, Backend, made_backend
from helpers import events, query
from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.projection import ClaimingRunner, Processor, ProcessorConfig
from pupsourcing.runner import ProjectionRunner, Runner
from pupsourcing.store.plan import Statement
from test_cancel_sweep import (
    EVENT_KEYS_SQL,
    _rows,
    committed,
    consistent,
    partition_of,
    projected,
    read_model_and_checkpoints,
    reset,
    reset_checkpoint,
)
from test_projection import append_many, create_read_model

MODES = ["before", "sent"]
RUNNER_BACKENDS = ["sqlite", "postgres", "mysql"]
"""The runners' sweeps leave mysqlclient out (for time): they add threads,
not statements, to what the processor's sweep runs on every driver."""
MAX_STATEMENTS = 80
OPENED: list[Any] = []
"""The connections :func:`connect` opened (closed after each check)."""


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with made_backend(request.param, tmp_path) as b:
        try:
            yield b
        finally:
            close_all()  # before the tables are dropped


class Sweep:
    """Wraps a store's statement execution to interrupt its ``at``-th
    statement (counted from when it is armed): a :class:`KeyboardInterrupt`
    raised there in the main thread, or (``threads``) sent to the main
    thread from another one, as Ctrl-C would, the statement still run."""

    def __init__(self, store: Any, mode: str) -> None:
        self.mode = mode
        self.at = 0
        self.made = 0
        self.raised: KeyboardInterrupt | None = None
        self._lock = threading.Lock()
        original = store._execute

        def execute_interrupted(tx: Any, statement: Statement) -> Any:
            if statement.begin and store._in_transaction(tx):
                return original(tx, statement)  # answered without the driver
            with self._lock:
                self.made += 1
                now = self.made == self.at
            if not now:
                return original(tx, statement)
            if threading.current_thread() is not threading.main_thread():
                if self.mode == "before":
                    _thread.interrupt_main()
                    return original(tx, statement)
                try:
                    return original(tx, statement)
                finally:
                    _thread.interrupt_main()
            self.raised = KeyboardInterrupt(f"statement {self.at}")
            if self.mode == "sent":
                with contextlib.suppress(Exception):  # an error reply: interrupted all the same
                    original(tx, statement)
            raise self.raised

        store._execute = execute_interrupted

    def arm(self, at: int) -> None:
        """Count statements from now on; interrupt the ``at``-th."""
        with self._lock:
            self.at, self.made, self.raised = at, 0, None

    def disarm(self) -> bool:
        """Whether the statement to interrupt was reached."""
        with self._lock:
            reached = self.at > 0 and self.made >= self.at
            self.at = 0
        return reached


def connect(db: Backend) -> Any:
    """A connection to ``db`` whose lock waits end after a second (a lock
    left behind fails the test instead of hanging it); closed by
    :func:`close_all`."""
    conn = db.connect()
    OPENED.append(conn)
    if db.name == "postgres":
        query(conn, "SET lock_timeout = '1s'")
    elif db.name == "mysql":
        query(conn, "SET SESSION innodb_lock_wait_timeout = 1")
    else:
        query(conn, "PRAGMA busy_timeout = 1000")
    conn.commit()
    return conn


def close_all() -> None:
    while OPENED:
        with contextlib.suppress(Exception):
            OPENED.pop().close()


def in_failed_transaction(db: Backend, conn: Any) -> bool:
    """Whether ``conn`` is in a transaction the server aborted (PostgreSQL)."""
    if db.name != "postgres":
        return False
    from psycopg.pq import TransactionStatus

    return bool(conn.info.transaction_status == TransactionStatus.INERROR)


def open_transaction(db: Backend, conn: Any) -> bool:
    """Whether ``conn`` has a transaction open (not merely one its next
    statement would open)."""
    if db.name == "postgres":
        return bool(conn.info.transaction_status != 0)
    if db.name == "mysql":
        from pupsourcing.adapters.mysql._dialect import _SERVER_STATUS_IN_TRANS

        status = conn.server_status if hasattr(conn, "server_status") else None
        if status is None:  # mysqlclient
            return bool(query(conn, "SELECT @@in_transaction")[0][0])
        return bool(status & _SERVER_STATUS_IN_TRANS)
    return bool(conn.in_transaction)


def appends_from_another_connection(db: Backend, aggregate_id: str, *, commit: bool = True) -> None:
    """An append to ``aggregate_id`` on a fresh connection: it fails (lock
    time-out) if the interrupted operation left a lock behind."""
    other = connect(db)
    db.store.append(other, ExpectedVersion.any(), events(1, aggregate_id))
    other.commit() if commit else other.rollback()


def sweep(
    operation: Callable[[int], Any],
    check: Callable[[int], None],
    sweeper: Sweep,
) -> int:
    """Run ``operation(at)``, which arms ``sweeper`` to interrupt its
    ``at``-th statement, for at = 1, 2, ..., and ``check(at)`` after each,
    until it completes; the statements it made."""
    for at in range(1, MAX_STATEMENTS):
        caught: KeyboardInterrupt | None = None
        try:
            operation(at)
        except KeyboardInterrupt as exc:
            caught = exc
        reached = sweeper.disarm()
        if caught is None:
            assert not reached, f"statement {at}: the KeyboardInterrupt was lost"
            return at - 1
        assert reached, f"statement {at}: {caught!r} without an interrupt"
        if sweeper.raised is not None:  # raised in this thread: unchanged
            assert caught is sweeper.raised, f"statement {at}: {caught!r}"
        check(at)
        close_all()
    raise AssertionError(f"still interrupted at statement {MAX_STATEMENTS}")


# -- the stores ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_append_in_the_callers_transaction_interrupted_anywhere(db: Backend, mode: str) -> None:
    """Interrupted anywhere inside the caller's transaction, an append
    leaves on PostgreSQL the transaction aborted (to roll back: nothing of
    it can commit); on MySQL and SQLite the caller's earlier writes to
    commit and none of the append's events (or all of them, interrupted
    once its last statement ran)."""
    store = db.store
    sweeper = Sweep(store, mode)
    conn: Any = None
    kept: dict[str, int] = {}
    stayed: list[int] = []

    def operation(at: int) -> None:
        nonlocal conn
        conn = connect(db)
        store.append(conn, ExpectedVersion.no_stream(), events(1, f"mine-{at}"))
        sweeper.arm(at)
        store.append(conn, ExpectedVersion.no_stream(), events(2, f"cut-{at}"))

    def check(at: int) -> None:
        if db.name == "postgres":
            assert in_failed_transaction(db, conn), f"statement {at}"
            conn.rollback()
        else:
            stream = store.read_aggregate_stream(conn, "Shop", "Order", f"cut-{at}")
            assert stream.version in (0, 2), f"statement {at}"
            if stream.version:
                stayed.append(at)
                kept[f"cut-{at}"] = 2
            conn.commit()
            kept[f"mine-{at}"] = 1
            assert query(conn, "SELECT 1") == [(1,)]
        assert consistent(db) == kept
        appends_from_another_connection(db, f"cut-{at}")
        kept[f"cut-{at}"] = kept.get(f"cut-{at}", 0) + 1

    made = sweep(operation, check, sweeper)
    assert made >= 1
    assert stayed == ([made] if db.name == "sqlite" and mode == "sent" else [])


@pytest.mark.parametrize("mode", MODES)
def test_append_on_an_autocommit_connection_interrupted_anywhere(db: Backend, mode: str) -> None:
    """Interrupted anywhere, an append on a connection in autocommit mode
    stored all of its events or none, and left no transaction open."""
    store = db.store
    sweeper = Sweep(store, mode)
    conn: Any = None

    def operation(at: int) -> None:
        nonlocal conn
        conn = connect(db)
        db.set_autocommit(conn)
        sweeper.arm(at)
        store.append(conn, ExpectedVersion.no_stream(), events(2, f"cut-{at}"))

    def check(at: int) -> None:
        assert not open_transaction(db, conn), f"statement {at}"
        assert query(conn, "SELECT 1") == [(1,)]
        assert consistent(db).get(f"cut-{at}", 0) in (0, 2)
        appends_from_another_connection(db, f"cut-{at}")

    assert sweep(operation, check, sweeper) >= 1


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
@pytest.mark.parametrize("mode", MODES)
def test_reads_interrupted_anywhere(db: Backend, mode: str, autocommit: bool) -> None:
    """An interrupted read leaves the connection usable (after a rollback
    where the server aborted the transaction)."""
    conn0 = connect(db)
    db.store.append(conn0, ExpectedVersion.any(), events(3, "a"))
    conn0.commit()
    store = db.store
    sweeper = Sweep(store, mode)
    conn: Any = None
    reads = [
        lambda: store.read_events(conn, 0, 10),
        lambda: store.read_aggregate_stream(conn, "Shop", "Order", "a"),
    ]
    for read in reads:

        def operation(at: int, read: Any = read) -> None:
            nonlocal conn
            conn = connect(db)
            if autocommit:
                db.set_autocommit(conn)
            sweeper.arm(at)
            read()

        def check(at: int) -> None:
            if in_failed_transaction(db, conn):
                conn.rollback()
            assert query(conn, "SELECT 1") == [(1,)]
            conn.rollback()

        assert sweep(operation, check, sweeper) >= 1


@pytest.mark.parametrize("mode", MODES)
def test_create_schema_interrupted_anywhere_can_be_run_again(db: Backend, mode: str) -> None:
    """A ``create_schema`` interrupted at any statement leaves a database on
    which it runs again, after which the store works."""
    from pupsourcing.store.config import StoreConfig

    sweepers: list[Sweep] = []
    conn: Any = None
    store: Any = None

    def operation(at: int) -> None:
        nonlocal conn, store
        prefix = f"s{at}_"
        config = StoreConfig(
            events_table=prefix + "events",
            aggregate_heads_table=prefix + "heads",
            checkpoints_table=prefix + "checkpoints",
        )
        store = type(db.store)(config)
        sweepers[:] = [Sweep(store, mode)]
        conn = connect(db)
        sweepers[0].arm(at)
        store.create_schema(conn)
        conn.commit()

    def check(at: int) -> None:
        if in_failed_transaction(db, conn):
            conn.rollback()
        assert query(conn, "SELECT 1") == [(1,)]
        conn.rollback()
        fresh = connect(db)
        store.create_schema(fresh)
        fresh.commit()
        store.append(fresh, ExpectedVersion.no_stream(), events(2, "x"))
        fresh.commit()
        assert store.read_aggregate_stream(fresh, "Shop", "Order", "x").version == 2
        fresh.rollback()

    class Current(Sweep):
        def __init__(self) -> None:  # the sweeper of the latest store
            pass

        def disarm(self) -> bool:
            return sweepers[0].disarm()

        @property  # type: ignore[override]
        def raised(self) -> KeyboardInterrupt | None:
            return sweepers[0].raised

    assert sweep(operation, check, Current()) >= 1


# -- projections -----------------------------------------------------------------


class Recorded:
    """A projection writing one row per event to the read model ``name``
    through ``tx``; it sets ``stop`` once it has seen every event in
    ``until``."""

    def __init__(self, db: Backend, name: str = "swept", until: list[int] | None = None) -> None:
        self.name = name
        mark = "?" if db.name == "sqlite" else "%s"
        self.sql = f"INSERT INTO {name} (position, aggregate_id) VALUES ({mark}, {mark})"
        self.until = set(until or ())
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        query(tx, self.sql, (event.global_position, event.aggregate_id))
        with self._lock:
            self.until.discard(event.global_position)
            if not self.until:
                self.stop.set()


@pytest.mark.parametrize("method", ["catch_up", "run"])
@pytest.mark.parametrize("own_connection", [True, False], ids=["factory", "callers"])
@pytest.mark.parametrize("mode", MODES)
def test_processor_interrupted_anywhere(
    db: Backend, mode: str, own_connection: bool, method: str
) -> None:
    """Interrupted at any statement, ``catch_up`` or ``run`` leaves the read
    model and the checkpoint agreeing (every row written up to the
    checkpoint, none after it), the caller's connection usable and out of
    any transaction, and no lock held: an append and a fresh processor then
    finish the job, each event applied once."""
    create_read_model(db, "swept")
    append_many(db, aggregates=2, per_aggregate=2)
    store = db.store
    sweeper = Sweep(store, mode)
    config = ProcessorConfig(batch_size=2, poll_interval=0.01)
    conn: Any = None

    def operation(at: int) -> None:
        nonlocal conn
        conn = None if own_connection else connect(db)
        projection = Recorded(db, until=committed(db))
        with Processor(conn or (lambda: connect(db)), store, config) as processor:
            sweeper.arm(at)
            if method == "run":
                processor.run(projection, stop=projection.stop)
            else:
                processor.catch_up(projection)

    def check(at: int) -> None:
        rows, checkpoint = projected(db, "swept")
        assert rows == [p for p in committed(db) if p <= checkpoint], f"statement {at}"
        if conn is not None:
            assert not open_transaction(db, conn), f"statement {at}"
            assert query(conn, "SELECT 1") == [(1,)]
            conn.rollback()
        appends_from_another_connection(db, "agg-0", commit=False)
        with Processor(connect(db), type(store)(store.config), config) as fresh:
            fresh.catch_up(Recorded(db))  # a row written twice: ProjectionError
        assert projected(db, "swept") == (committed(db), committed(db)[-1])
        reset(db, "swept")

    assert sweep(operation, check, sweeper) > 4


def join_runner_threads() -> None:
    """Wait for the threads a runner left running (an interruption while it
    waited for them is raised at once)."""
    for thread in threading.enumerate():
        if thread.name.startswith("pupsourcing-") and thread is not threading.current_thread():
            thread.join(10)
            assert not thread.is_alive(), thread.name


@pytest.mark.parametrize("db", RUNNER_BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_runner_interrupted_anywhere(db: Backend, mode: str) -> None:
    """Interrupted in the calling thread as any statement of either
    projection is under way, :class:`Runner` raises the
    :class:`KeyboardInterrupt` once both projections ended their batch:
    each read model agrees with its checkpoint, every connection is closed
    and no lock is left."""
    names = ["swept_a", "swept_b"]
    for name in names:
        create_read_model(db, name)
    append_many(db, aggregates=2, per_aggregate=2)
    store = db.store
    sweeper = Sweep(store, mode)
    config = ProcessorConfig(batch_size=2, poll_interval=0.01)
    processors: list[Processor[Any]] = []

    def operation(at: int) -> None:
        stop = threading.Event()
        projections = [Recorded(db, name, until=committed(db)) for name in names]
        processors[:] = [Processor(lambda: connect(db), store, config) for _ in names]
        runners = [ProjectionRunner(p, c) for p, c in zip(projections, processors, strict=True)]

        def all_seen() -> None:
            for projection in projections:
                projection.stop.wait(10)
            stop.set()

        watch = threading.Thread(target=all_seen, daemon=True)
        watch.start()
        sweeper.arm(at)
        try:
            Runner(poll_interval=0.01).run(runners, stop=stop)
        finally:
            stop.set()
            for projection in projections:
                projection.stop.set()
            join_runner_threads()
            for processor in processors:
                processor.close()

    def check(at: int) -> None:
        for name in names:
            rows, checkpoint = projected(db, name)
            assert rows == [p for p in committed(db) if p <= checkpoint], (at, name)
        appends_from_another_connection(db, "agg-0", commit=False)
        for name in names:
            reset(db, name)

    assert sweep(operation, check, sweeper) > 4


@pytest.mark.parametrize("db", RUNNER_BACKENDS, indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_claiming_runner_interrupted_anywhere(db: Backend, mode: str) -> None:
    """Interrupted in the calling thread as any of its statements (leases,
    or a partition's batch) is under way, :class:`ClaimingRunner` raises the
    :class:`KeyboardInterrupt` having released every lease it held, its
    member row too, and each partition's read model agrees with its
    checkpoint."""
    create_read_model(db, "swept")
    append_many(db, aggregates=4, per_aggregate=1)
    names = ["swept_p0", "swept_p1"]
    store = db.store
    sweeper = Sweep(store, mode)
    config = ProcessorConfig(batch_size=2, poll_interval=0.01, total_partitions=2)

    def operation(at: int) -> None:
        projection = Recorded(db, until=committed(db))
        runner = ClaimingRunner(lambda: connect(db), store, config, lease_ttl=30, owner="me")
        sweeper.arm(at)
        try:
            runner.run(projection, stop=projection.stop)
        finally:
            projection.stop.set()
            join_runner_threads()

    def check(at: int) -> None:
        conn = db.connect()
        try:
            held = [lease for lease in db.store.list_leases(conn) if lease.owner]
        finally:
            conn.close()
        assert held == [], f"statement {at}"
        rows, checkpoints = read_model_and_checkpoints(db, "swept")
        assert rows == [
            position
            for position, aggregate_id in _rows(db, EVENT_KEYS_SQL)
            if position <= checkpoints.get(names[partition_of(aggregate_id)], 0)
        ], f"statement {at}"
        appends_from_another_connection(db, "agg-0", commit=False)
        reset(db, "swept")
        for name in names:
            reset_checkpoint(db, name)

    assert sweep(operation, check, sweeper) > 4


# -- the domain layer ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_repository_save_and_load_interrupted_anywhere(db: Backend, mode: str) -> None:
    """An interrupted ``save`` (an append and a snapshot) keeps the
    aggregate's pending events: once the caller rolls back, saving again
    stores them once; an interrupted ``load`` leaves the connection usable."""
    from domain_model import Order, codec
    from pupsourcing.domain import Repository

    store = db.store
    sweeper = Sweep(store, mode)
    repository = Repository(store, Order, codec(), snapshot_every=2)
    conn: Any = None
    order: Any = None

    def save(at: int) -> None:
        nonlocal conn, order
        conn = connect(db)
        order = Order(f"order-{at}")
        order.place("ada")
        order.add("pen", "1.50")
        sweeper.arm(at)
        repository.save(conn, order)
        conn.commit()

    def saved_again(at: int) -> None:
        conn.rollback()
        assert len(order.pending_events) == 2, f"statement {at}"
        again = connect(db)
        repository.save(again, order)
        again.commit()
        assert repository.load(again, f"order-{at}").version == 2
        again.rollback()
        assert consistent(db)[f"order-{at}"] == 2

    assert sweep(save, saved_again, sweeper) >= 2

    def load(at: int) -> None:
        nonlocal conn
        conn = connect(db)
        sweeper.arm(at)
        assert repository.load(conn, "order-1").version == 2

    def usable(at: int) -> None:
        conn.rollback()
        assert query(conn, "SELECT 1") == [(1,)]

    assert sweep(load, usable, sweeper) >= 2
