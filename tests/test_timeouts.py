"""Lock and statement time-outs the caller sets are honoured.

An append blocked behind another transaction's lock fails with the driver's
own time-out error (the store neither swallows nor converts it) instead of
waiting forever, and leaves nothing half-written: the caller's earlier writes
in the same transaction are intact where the database keeps the transaction
(MariaDB, SQLite), and no aggregate head was bumped without its events.

Two places an append can wait: the aggregate's head row (another transaction
appends to the same aggregate) and the unique index on ``event_id`` (another
transaction inserted the same id), which an append reaches only after its
head was bumped.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, close_backend, make_backend
from helpers import event, events, query
from pupsourcing import ExpectedVersion, PupsourcingError
from pupsourcing.adapters.sqlite import connect as sqlite_connect


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend("postgres", tmp_path)
    yield backend
    close_backend(backend)


@pytest.fixture
def mysql(tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend("mysql", tmp_path)
    yield backend
    close_backend(backend)


def hold(backend: Backend, blocking: str) -> tuple[Any, Any]:
    """An open transaction that blocks the next append to aggregate "held"
    (``blocking="head"``) or of the event id it returns (``"event_id"``)."""
    holder = backend.connection()
    taken = event("held" if blocking == "head" else "elsewhere")
    backend.store.append(holder, ExpectedVersion.any(), [taken])
    return holder, taken.event_id


def blocked_append(blocking: str, taken: uuid.UUID) -> list[Any]:
    """The append that has to wait: to "held", or to a fresh aggregate (whose
    head it bumps first) with the taken event id."""
    if blocking == "head":
        return [event("held")]
    return [event("fresh", event_id=taken)]


def assert_raises_within(
    error: type[BaseException], seconds: float, append: Any, *args: Any
) -> BaseException:
    started = time.monotonic()
    with pytest.raises(error) as raised:
        append(*args)
    assert time.monotonic() - started < seconds
    assert type(raised.value) is error or issubclass(type(raised.value), error)
    assert not isinstance(raised.value, PupsourcingError)  # not converted
    return raised.value


@pytest.mark.parametrize("blocking", ["head", "event_id"])
@pytest.mark.parametrize(
    ("setting", "error_name"),
    [("lock_timeout", "LockNotAvailable"), ("statement_timeout", "QueryCanceled")],
)
def test_postgres_time_outs_surface_unconverted(
    pg: Backend, blocking: str, setting: str, error_name: str
) -> None:
    import psycopg

    error = getattr(psycopg.errors, error_name)
    before = pg.snapshot()
    holder, taken = hold(pg, blocking)
    waiter = pg.connection()
    pg.store.append(waiter, ExpectedVersion.any(), events(2, "mine"))  # an earlier write
    query(waiter, f"SET LOCAL {setting} = '300ms'")
    assert_raises_within(
        error, 5, pg.store.append, waiter, ExpectedVersion.any(), blocked_append(blocking, taken)
    )
    # PostgreSQL aborts the whole transaction on an error: the caller rolls back.
    waiter.rollback()
    holder.rollback()
    assert pg.snapshot() == before


@pytest.mark.parametrize("autocommit", [False, True])
@pytest.mark.parametrize("blocking", ["head", "event_id"])
@pytest.mark.parametrize(
    ("setting", "errno"),
    [
        ("innodb_lock_wait_timeout = 1", 1205),  # lock wait timeout exceeded
        ("max_statement_time = 0.3", 1969),  # MariaDB's statement time-out
    ],
)
def test_mariadb_time_outs_surface_unconverted_and_undo_the_append(
    mysql: Backend, blocking: str, setting: str, errno: int, autocommit: bool
) -> None:
    import pymysql

    before = mysql.snapshot()
    holder, taken = hold(mysql, blocking)
    waiter = mysql.connection()
    query(waiter, f"SET SESSION {setting}")
    mysql.set_autocommit(waiter, autocommit)
    if not autocommit:
        mysql.store.append(waiter, ExpectedVersion.any(), events(2, "mine"))  # an earlier write
    raised = assert_raises_within(
        pymysql.err.OperationalError,
        5,
        mysql.store.append,
        waiter,
        ExpectedVersion.any(),
        blocked_append(blocking, taken),
    )
    assert raised.args[0] == errno
    # MariaDB ends only the statement: the caller's transaction goes on and
    # commits its earlier write, and nothing of the timed-out append.
    waiter.commit()
    holder.rollback()
    (count, _), heads = mysql.snapshot()
    (count_before, _), heads_before = before
    assert not [h for h in heads if h[2] == "fresh"]  # no head bumped without its events
    if autocommit:
        assert (count, heads) == (count_before, heads_before)
    else:
        assert count == count_before + 2
        assert heads == (*heads_before, ("Shop", "Order", "mine", 2))


def test_sqlite_busy_timeout_surfaces_unconverted(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path)
    try:
        path = tmp_path / "store.db"  # where make_backend puts it
        before = backend.snapshot()
        holder = backend.connection()
        backend.store.append(holder, ExpectedVersion.any(), events(1, "held"))  # holds the lock
        waiter = sqlite_connect(path, timeout=0.3)
        try:
            started = time.monotonic()
            raised = assert_raises_within(
                sqlite3.OperationalError,
                5,
                backend.store.append,
                waiter,
                ExpectedVersion.any(),
                [event("held")],
            )
            assert time.monotonic() - started >= 0.25  # it did wait for the lock
            assert "locked" in str(raised)
            assert not waiter.in_transaction  # nothing begun, nothing to undo
        finally:
            waiter.close()
        holder.rollback()
        assert backend.snapshot() == before
    finally:
        close_backend(backend)
