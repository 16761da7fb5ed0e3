"""The asyncio stores, one per adapter.

Each reuses its adapter's dialect (:mod:`pupsourcing.adapters.postgres`,
:mod:`~pupsourcing.adapters.mysql`, :mod:`~pupsourcing.adapters.sqlite`): the
SQL, validation, row mapping and error classification are those of the
blocking store. What is left here is how each asyncio driver runs one
statement. No driver is imported at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pupsourcing.adapters import mysql, postgres
from pupsourcing.adapters.mysql import MySQLDialect
from pupsourcing.adapters.postgres import PostgresDialect
from pupsourcing.adapters.sqlite import SQLiteDialect
from pupsourcing.aio.store import AsyncSQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    import aiosqlite
    import psycopg

__all__ = ["AsyncMySQLStore", "AsyncPostgresStore", "AsyncSQLiteStore"]


class AsyncPostgresStore(AsyncSQLStore["psycopg.AsyncConnection[Any]"]):
    """Event store on a psycopg 3 ``AsyncConnection`` passed to each call
    (the ``postgres`` extra); the asyncio twin of
    :class:`~pupsourcing.adapters.postgres.PostgresStore`."""

    dialect_class = PostgresDialect

    async def _query(self, tx: psycopg.AsyncConnection[Any], statement: Statement) -> list[Row]:
        # As PostgresStore._cursor runs statements on a blocking connection:
        # server-side binding and binary results, events decoded as each
        # chunk of rows arrives, whatever the connection's own cursor and row
        # factories.
        cursor = await postgres.execute_async(tx, statement)
        try:
            rows = await cursor.fetchall() if statement.fetch else None
            return statement.answer(rows, cursor.rowcount, decoded=True)
        finally:
            await cursor.close()

    async def _in_transaction(self, tx: psycopg.AsyncConnection[Any]) -> bool:
        return postgres.in_transaction(tx)


class AsyncMySQLStore(AsyncSQLStore[Any]):
    """Event store on an ``asyncmy`` connection passed to each call (the
    ``asyncmy`` extra); the asyncio twin of
    :class:`~pupsourcing.adapters.mysql.MySQLStore`, with the same supported
    servers, limits and privileges.

    aiomysql offers the same interface, but cannot send ``bytes`` parameters
    with PyMySQL 1.2.3 or newer (aio-libs/aiomysql#1080), and every payload
    is ``bytes``.
    """

    dialect_class = MySQLDialect
    dialect: MySQLDialect

    async def _query(self, tx: Any, statement: Statement) -> list[Row]:
        cursor = await tx.cursor()
        try:
            # Like PyMySQL, asyncmy %-formats the SQL only when given parameters.
            await cursor.execute(statement.sql, statement.params if statement.params else None)
            rows = mysql.tuple_rows(list(await cursor.fetchall())) if statement.fetch else None
            return statement.answer(rows, cursor.rowcount)
        finally:
            await cursor.close()

    async def _in_transaction(self, tx: Any) -> bool:
        known = mysql.known_transaction_state(tx)
        if known is not None:
            return known
        return await self._run(tx, self.dialect.transaction_probe())


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
