"""The asyncio SQLite store, on aiosqlite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pupsourcing.adapters.sqlite._dialect import SQLiteDialect
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    import aiosqlite


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

    async def _in_transaction(self, tx: aiosqlite.Connection) -> bool:
        # aiosqlite reads the flag of its sqlite3 connection, which sqlite3
        # allows from any thread.
        return tx.in_transaction
