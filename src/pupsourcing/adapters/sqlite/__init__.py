"""SQLite adapter on the standard library's :mod:`sqlite3`.

:class:`SQLiteStore` works on :mod:`sqlite3` connections;
:class:`pupsourcing.aio.AsyncSQLiteStore` runs the same :class:`SQLiteDialect`
plans on ``aiosqlite`` connections (see :func:`connect_async`).

SQLite has one writer at a time. ``append`` takes the write lock before it
reads the aggregate's version: if no transaction is open it issues
``BEGIN IMMEDIATE`` (which the caller then commits or rolls back), so two
connections appending to the same aggregate are serialised and the loser sees
:class:`~pupsourcing.OptimisticConcurrencyError`, never a duplicate version.
Use WAL mode (:func:`connect` sets it) so readers never block the writer.
"""

from pupsourcing.adapters.sqlite._aio import AsyncSQLiteStore
from pupsourcing.adapters.sqlite._dialect import MAX_VALUE_BYTES
from pupsourcing.adapters.sqlite._store import SQLiteStore, connect, connect_async

__all__ = ["MAX_VALUE_BYTES", "AsyncSQLiteStore", "SQLiteStore", "connect", "connect_async"]
