"""The blocking SQLite store and the connection helpers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pupsourcing.adapters.sqlite._dialect import SQLiteDialect
from pupsourcing.store.base import Cursor, SQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    from os import PathLike

    import aiosqlite


_WAL_SQL = "PRAGMA journal_mode=WAL"
_CHUNK_ROWS = 64
"""Rows :class:`_DecodingCursor` fetches and decodes at a time."""


class _DecodingCursor:
    """A cursor whose ``fetchall`` decodes the rows a chunk at a time as
    sqlite3 reads them: each raw row dies soon after it is decoded instead
    of all of them staying alive until the whole result is (less for the
    garbage collector to walk). ``fetchmany`` loads a chunk in one C loop,
    which costs less than stepping the cursor row by row from Python (about
    8% of reading a 1,000-event stream)."""

    __slots__ = ("_cursor", "_decode")

    def __init__(self, cursor: sqlite3.Cursor, decode: Callable[[Iterable[Row]], list[Any]]):
        self._cursor = cursor
        self._decode = decode

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchall(self) -> list[Any]:
        fetch, decode = self._cursor.fetchmany, self._decode
        decoded = decode(fetch(_CHUNK_ROWS))
        if len(decoded) == _CHUNK_ROWS:
            while rows := fetch(_CHUNK_ROWS):
                decoded += decode(rows)
        return decoded

    def close(self) -> None:
        self._cursor.close()


def end_transaction(conn: sqlite3.Connection, commit: bool) -> None:
    """COMMIT or ROLLBACK, also on a connection opened with
    ``autocommit=True`` (Python 3.12+), whose ``commit()`` and ``rollback()``
    do nothing, though our ``BEGIN IMMEDIATE`` opened a transaction."""
    if getattr(conn, "autocommit", None) is True:
        if conn.in_transaction:
            conn.execute("COMMIT" if commit else "ROLLBACK")
    elif commit:
        conn.commit()
    else:
        conn.rollback()


def begin_anew(conn: sqlite3.Connection, sql: str) -> bool:
    """On a connection opened with ``autocommit=False`` (Python 3.12+), which
    always has a deferred transaction of sqlite3's own open: end it and run
    ``sql`` (a BEGIN) instead; answers whether it did (elsewhere it does
    nothing). Only for a plan that holds the connection and has merely read
    in that transaction (a projection batch, after reading its events):
    SQLite refuses the write lock at once to a transaction that has read,
    where a new one waits for it. Should ``sql`` fail, sqlite3's
    transaction is opened again, as the mode promises."""
    if getattr(conn, "autocommit", None) is not False or not conn.in_transaction:
        return False
    conn.execute("ROLLBACK")
    try:
        conn.execute(sql)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.execute("BEGIN")
        raise
    return True


class SQLiteStore(SQLStore[sqlite3.Connection]):
    """Event store on a :class:`sqlite3.Connection` passed to each call;
    :class:`~pupsourcing.aio.AsyncSQLiteStore` is its asyncio twin."""

    dialect_class = SQLiteDialect
    decodes_rows = True

    def _cursor(self, tx: sqlite3.Connection, statement: Statement) -> Cursor:
        cursor = tx.execute(statement.sql, statement.params)
        if statement.decode is None:
            return cursor
        return _DecodingCursor(cursor, statement.decode.many)

    def _end_transaction(self, tx: sqlite3.Connection, *, commit: bool) -> None:
        end_transaction(tx, commit)

    def _execute(self, tx: sqlite3.Connection, statement: Statement) -> list[Any]:
        if statement.eager and statement.begin and begin_anew(tx, statement.sql):
            return statement.answer(None, -1)
        return super()._execute(tx, statement)

    def _in_transaction(self, tx: sqlite3.Connection) -> bool:
        # sqlite3 opens implicit transactions only before DML, never before
        # our BEGIN IMMEDIATE, so the connection's own flag is the truth.
        return tx.in_transaction


def connect(
    path: str | PathLike[str], *, timeout: float = 5.0, wal: bool = True, create: bool = True
) -> sqlite3.Connection:
    """Open a SQLite database the way the store works best with it.

    WAL journal mode (readers never block the writer) and a busy timeout of
    ``timeout`` seconds for the write lock (a file the process may only
    read keeps its journal mode: reads work, writes fail with SQLite's
    ``attempt to write a readonly database``). Transactions are the caller's:
    commit or roll back as usual. With ``create=False`` a missing database
    file raises :class:`FileNotFoundError` instead of being created.
    """
    if create or str(path) == ":memory:":
        connection = sqlite3.connect(path, timeout=timeout)
    else:
        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"no SQLite database at {path}")
        uri = f"file:{quote(str(file))}?mode=rw"
        connection = sqlite3.connect(uri, timeout=timeout, uri=True)
    if wal:
        try:
            connection.execute(_WAL_SQL)
        except sqlite3.OperationalError as exc:
            _read_only(exc)
    return connection


def _read_only(exc: sqlite3.OperationalError) -> None:
    """Re-raise ``exc`` unless it says that the file may only be read: such a
    file keeps its journal mode (switching writes to it), reads work, and
    writes fail with SQLite's own error."""
    if not (getattr(exc, "sqlite_errorname", None) or "").startswith("SQLITE_READONLY"):
        raise exc


async def connect_async(
    path: str | PathLike[str], *, timeout: float = 5.0, wal: bool = True
) -> aiosqlite.Connection:
    """:func:`connect` for asyncio: an ``aiosqlite`` connection in WAL mode with
    a busy timeout of ``timeout`` seconds.

    aiosqlite runs every call on the connection's own thread; the connection
    is opened with ``check_same_thread=False`` so that its properties (such
    as ``isolation_level``) can also be set from the event loop's thread.
    """
    import aiosqlite

    connection = await aiosqlite.connect(os.fspath(path), timeout=timeout, check_same_thread=False)
    if wal:
        try:
            await connection.execute(_WAL_SQL)
        except sqlite3.OperationalError as exc:
            _read_only(exc)
    return connection
