"""The blocking MySQL/MariaDB store, on any DB-API MySQL driver."""

from __future__ import annotations

from typing import Any

from pupsourcing.adapters.mysql._dialect import MySQLDialect
from pupsourcing.adapters.mysql._driver import known_transaction_state, tuple_rows
from pupsourcing.store.base import Cursor, SQLStore
from pupsourcing.store.plan import Statement


class MySQLStore(SQLStore[Any]):
    """Event store on a DB-API MySQL connection (PyMySQL, mysqlclient, ...)
    passed to each call; :class:`~pupsourcing.aio.AsyncMySQLStore` is its
    asyncio twin."""

    dialect_class = MySQLDialect
    dialect: MySQLDialect

    def _cursor(self, tx: Any, statement: Statement) -> Cursor:
        cursor = tx.cursor()
        # PyMySQL and mysqlclient only %-format when given parameters.
        cursor.execute(statement.sql, statement.params if statement.params else None)
        return cursor  # type: ignore[no-any-return]

    def _fetch(self, cursor: Cursor) -> list[Any]:
        return tuple_rows(list(cursor.fetchall()))

    def _in_transaction(self, tx: Any) -> bool:
        known = known_transaction_state(tx)
        if known is not None:
            return known
        return self._run(tx, self.dialect.transaction_probe())
