"""The blocking MySQL/MariaDB store, on any DB-API MySQL driver."""

from __future__ import annotations

from typing import Any

from pupsourcing.adapters.mysql._dialect import MySQLDialect
from pupsourcing.adapters.mysql._driver import (
    check_text_settings,
    known_transaction_state,
    tuple_rows,
)
from pupsourcing.store.base import Cursor, SQLStore
from pupsourcing.store.plan import Statement

_fast_cursors: dict[type, Any] = {}
"""Connection class -> the cursor class that reads its results faster (see
``_reads``), or ``None``."""


def _fast_cursor(connection_class: type) -> Any:
    try:
        return _fast_cursors[connection_class]
    except KeyError:
        pass
    cursor = None
    if connection_class.__module__.startswith("pymysql"):  # never import a driver otherwise
        from pupsourcing.adapters.mysql import _reads

        if _reads.SUPPORTED and issubclass(connection_class, _reads.CONNECTION_CLASS):
            cursor = _reads.FastCursor
    _fast_cursors[connection_class] = cursor
    return cursor


class MySQLStore(SQLStore[Any]):
    """Event store on a DB-API MySQL connection (PyMySQL, mysqlclient, ...)
    passed to each call; :class:`~pupsourcing.aio.AsyncMySQLStore` is its
    asyncio twin."""

    dialect_class = MySQLDialect
    dialect: MySQLDialect

    def _cursor(self, tx: Any, statement: Statement) -> Cursor:
        check_text_settings(tx)
        fast = _fast_cursor(type(tx)) if statement.fetch else None
        cursor = tx.cursor() if fast is None else tx.cursor(fast)
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
