"""Which open transactions hold a projection back, as the adapter pages say.

PostgreSQL: only transactions that wrote to the events table. MySQL/MariaDB:
any transaction that has written anything, in any database of the server;
read-only transactions do not.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, make_backend, mysql_admin
from helpers import Count, event
from pupsourcing import ExpectedVersion
from pupsourcing.projection import Processor

HELD_BACK = 1.5
"""How long a catch_up held back by ``blocker`` is watched still waiting."""
NOT_HELD_BACK = 30.0
"""How long a catch_up that ``blocker`` does not hold back may take: on
MySQL, other transactions on the server (another test's) hold it back too,
until they end, so "finishes at once" cannot be timed."""


def catch_up_waits(backend: Backend, blocker: Any, patience: float = HELD_BACK) -> bool:
    """Whether catch_up is still waiting after ``patience`` seconds with
    ``blocker`` open; it must finish once ``blocker`` rolls back."""
    conn = backend.connection()
    backend.store.append(conn, ExpectedVersion.any(), [event(f"a-{uuid.uuid4().hex}")])
    conn.commit()
    projection = Count()
    processor = Processor(backend.connect, backend.store)
    thread = threading.Thread(target=processor.catch_up, args=(projection,))
    thread.start()
    thread.join(patience)
    waited = thread.is_alive()
    blocker.rollback()
    thread.join(10)
    processor.close()
    assert not thread.is_alive()
    assert projection.seen >= 1
    return waited


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend("postgres", tmp_path)
    yield backend
    for cleanup in reversed(backend.cleanups):
        cleanup()


@pytest.fixture
def mysql(tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend("mysql", tmp_path)
    yield backend
    for cleanup in reversed(backend.cleanups):
        cleanup()


def test_postgres_waits_only_for_writers_of_the_events_table(postgres: Backend) -> None:
    setup = postgres.connection()
    setup.execute("CREATE TABLE other (x INT)")
    setup.commit()
    elsewhere = postgres.connection()
    elsewhere.execute("INSERT INTO other VALUES (1)")
    assert not catch_up_waits(postgres, elsewhere, NOT_HELD_BACK)

    appender = postgres.connection()
    postgres.store.append(appender, ExpectedVersion.any(), [event("open")])
    assert catch_up_waits(postgres, appender)


def test_mysql_waits_for_any_writer_on_the_server(mysql: Backend) -> None:
    import pymysql

    from conftest import MYSQL_HOST

    admin = mysql_admin()
    other = f"t_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f"CREATE DATABASE {other}")
    try:
        conn = pymysql.connect(host=MYSQL_HOST, user="root", password="", database=other)
        conn.cursor().execute("CREATE TABLE t (x INT)")
        conn.commit()
        conn.cursor().execute("SELECT * FROM t")  # a read-only transaction
        assert not catch_up_waits(mysql, conn, NOT_HELD_BACK)
        conn.cursor().execute("INSERT INTO t VALUES (1)")  # a writer in another database
        assert catch_up_waits(mysql, conn)
        conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE {other}")
        admin.close()
