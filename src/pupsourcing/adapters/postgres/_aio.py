"""The asyncio PostgreSQL store, on psycopg 3's AsyncConnection."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.postgres._dialect import NotifyOption, PostgresDialect
from pupsourcing.adapters.postgres._driver import (
    ABORT_SQL,
    begin_now_async,
    commit_and_begin_async,
    execute_async,
    idle_in_transaction,
    in_transaction,
    may_commit_and_begin,
    opens_later,
)
from pupsourcing.adapters.postgres._listen import AsyncPsycopgListener
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.plan import Row, Statement

if TYPE_CHECKING:
    import psycopg


class AsyncPostgresStore(NotifyOption, AsyncSQLStore["psycopg.AsyncConnection[Any]"]):
    """Event store on a psycopg 3 ``AsyncConnection`` passed to each call
    (the ``postgres`` extra); the asyncio twin of
    :class:`~pupsourcing.adapters.postgres.PostgresStore`.

    An ``append`` cancelled inside a transaction leaves the transaction
    aborted, to be rolled back: whether its statement took effect or not,
    nothing of the transaction can commit (the MySQL and SQLite stores roll
    back to a savepoint instead; a PostgreSQL append is one statement).
    """

    dialect_class = PostgresDialect

    async def _query(self, tx: psycopg.AsyncConnection[Any], statement: Statement) -> list[Row]:
        # As PostgresStore._cursor runs statements on a blocking connection:
        # server-side binding and binary results, events decoded as each
        # chunk of rows arrives, whatever the connection's own cursor and row
        # factories.
        cursor = await execute_async(tx, statement)
        try:
            rows = await cursor.fetchall() if statement.fetch else None
            return statement.answer(rows, cursor.rowcount, decoded=True)
        finally:
            await cursor.close()

    async def _in_transaction(self, tx: psycopg.AsyncConnection[Any]) -> bool:
        return in_transaction(tx)

    async def _execute(self, tx: psycopg.AsyncConnection[Any], statement: Statement) -> list[Row]:
        if statement.eager:
            if statement.begin and opens_later(tx):
                await begin_now_async(tx)
                return [(True,)]
            if statement.control == "commit" and may_commit_and_begin(tx):
                await commit_and_begin_async(tx)
                return []
        return await super()._execute(tx, statement)

    async def _interrupted_append(self, tx: psycopg.AsyncConnection[Any]) -> None:
        if idle_in_transaction(tx):  # as PostgresStore._interrupted_append
            with contextlib.suppress(Exception):
                await tx.execute(ABORT_SQL)

    def _push_listener(self) -> AsyncPsycopgListener:
        dialect = self.dialect
        assert isinstance(dialect, PostgresDialect)
        return AsyncPsycopgListener(dialect.notify_channel, dialect.events_table)
