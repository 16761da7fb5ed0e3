"""The asyncio MySQL/MariaDB store, on asyncmy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.mysql._dialect import MySQLDialect
from pupsourcing.adapters.mysql._driver import (
    check_text_settings,
    known_transaction_state,
    sql_with_params,
    tuple_rows,
)
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    pass


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
        check_text_settings(tx)
        cursor = await tx.cursor()
        try:
            # Like PyMySQL, asyncmy %-formats the SQL only when given parameters.
            params = statement.params
            written = sql_with_params(tx, statement.sql, params) if params else None
            if written is not None:
                await cursor.execute(written, None)
            else:
                await cursor.execute(statement.sql, params if params else None)
            rows = tuple_rows(list(await cursor.fetchall())) if statement.fetch else None
            return statement.answer(rows, cursor.rowcount)
        finally:
            await cursor.close()

    async def _in_transaction(self, tx: Any) -> bool:
        known = known_transaction_state(tx)
        if known is not None:
            return known
        return await self._run(tx, self.dialect.transaction_probe())
