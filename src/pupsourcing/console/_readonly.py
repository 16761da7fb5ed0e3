"""Read-only connections for the console, one per worker thread.

Every connection is switched to read-only before its first use: on
PostgreSQL every transaction of the session is ``READ ONLY``, on MySQL the
session's transactions are ``READ ONLY``, and a SQLite file is opened with
``mode=ro`` and ``PRAGMA query_only``. The connections run in autocommit
mode: each statement is its own read-only transaction and sees what was
committed before it, without ``BEGIN``/``ROLLBACK`` round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from pupsourcing.cli._db import is_driver_error
from pupsourcing.urls import Database

T = TypeVar("T")

_SESSION_SQL = {
    "postgres": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
}


def open_read_only(db: Database) -> Any:
    """A new connection to ``db`` on which no statement can write."""
    adapter = db.url.adapter
    if adapter == "sqlite":
        path = db.url.path
        assert path is not None
        if path == ":memory:":
            raise ValueError("the console needs a SQLite file, not :memory:")
        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"no SQLite database at {path}")
        timeout = float(db.url.params.get("timeout", 5.0))
        conn = sqlite3.connect(
            f"file:{quote(str(file))}?mode=ro",
            timeout=timeout,
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # used by one thread; closed by another at shutdown
        )
        conn.execute("PRAGMA query_only = ON")
        return conn
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(_SESSION_SQL[adapter])
        cursor.close()
        conn.commit()
        _autocommit(conn)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise
    return conn


def _autocommit(conn: Any) -> None:
    switch = conn.autocommit
    if callable(switch):  # PyMySQL and mysqlclient: a method
        switch(True)
    else:  # psycopg: an attribute
        conn.autocommit = True


class Reader:
    """Runs blocking reads on a few threads, each with its own read-only
    connection (opened on first use, dropped after a database error)."""

    def __init__(self, db: Database, threads: int = 4) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="pupsourcing-ui")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_read_only(self.db)
            self._local.conn = conn
            with self._lock:
                self._open.append(conn)
        return conn

    def _drop(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _call(self, read: Callable[[Any], T]) -> T:
        conn = self._connection()
        try:
            return read(conn)
        except Exception as exc:
            if is_driver_error(exc):
                self._drop(conn)  # perhaps lost: the next read reconnects
            raise

    async def run(self, read: Callable[[Any], T]) -> T:
        """``read(conn)`` on a worker thread, on a read-only connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, read)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
