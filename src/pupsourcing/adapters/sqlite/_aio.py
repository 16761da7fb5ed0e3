"""The asyncio SQLite store, on aiosqlite."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.sqlite._dialect import SQLiteDialect
from pupsourcing.adapters.sqlite._store import begin_anew, end_transaction
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    import aiosqlite


@lru_cache(maxsize=1)
def _runs_on_its_thread() -> bool:
    """Whether aiosqlite's connections run a function on their thread as
    their own methods do (its private ``_execute``; every release so far)."""
    import aiosqlite

    return hasattr(aiosqlite.Connection, "_execute") and hasattr(aiosqlite.Connection, "_conn")


class AsyncSQLiteStore(AsyncSQLStore["aiosqlite.Connection"]):
    """Event store on an ``aiosqlite`` connection passed to each call (the
    ``aiosqlite`` extra); open one with
    :func:`pupsourcing.adapters.sqlite.connect_async`. The asyncio twin of
    :class:`~pupsourcing.adapters.sqlite.SQLiteStore`: ``append`` begins a
    transaction (``BEGIN IMMEDIATE``) when none is open."""

    dialect_class = SQLiteDialect

    async def _query(self, tx: aiosqlite.Connection, statement: Statement) -> list[Row]:
        if statement.rowcount:
            async with tx.execute(statement.sql, statement.params) as cursor:
                return statement.answer(None, cursor.rowcount)
        # One trip to the connection's thread: execute and fetch there.
        rows = await tx.execute_fetchall(statement.sql, statement.params)
        return statement.answer(rows, -1)

    async def _end_transaction(self, tx: aiosqlite.Connection, *, commit: bool) -> None:
        # On the connection's thread, as aiosqlite's commit() runs (sqlite3
        # answers whether it is in autocommit mode only there).
        if _runs_on_its_thread():
            run: Any = tx._execute  # (untyped)
            await run(end_transaction, tx._conn, commit)
        else:
            await (tx.commit() if commit else tx.rollback())

    async def _execute(self, tx: aiosqlite.Connection, statement: Statement) -> list[Row]:
        # On the connection's thread, in one call: an interruption cannot
        # leave sqlite3's transaction ended and the BEGIN not run.
        if statement.eager and statement.begin and _runs_on_its_thread():
            run: Any = tx._execute  # (untyped)
            if await run(begin_anew, tx._conn, statement.sql):
                return statement.answer(None, -1)
        return await super()._execute(tx, statement)

    async def _in_transaction(self, tx: aiosqlite.Connection) -> bool:
        # aiosqlite reads the flag of its sqlite3 connection, which sqlite3
        # allows from any thread.
        return tx.in_transaction
