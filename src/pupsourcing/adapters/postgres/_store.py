"""The blocking PostgreSQL store, on psycopg 3."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pupsourcing.adapters.postgres._dialect import NotifyOption, PostgresDialect
from pupsourcing.adapters.postgres._driver import (
    ABORT_SQL,
    _psycopg,
    begin_now,
    commit_and_begin,
    idle_in_transaction,
    in_transaction,
    may_commit_and_begin,
    may_run_alone,
    opens_later,
    read_rows,
    run_alone,
)
from pupsourcing.adapters.postgres._listen import PsycopgListener
from pupsourcing.store.base import SQLStore
from pupsourcing.store.plan import Statement

if TYPE_CHECKING:
    import psycopg


class PostgresStore(NotifyOption, SQLStore["psycopg.Connection[Any]"]):
    """Event store on a psycopg 3 connection passed to each call;
    :class:`~pupsourcing.aio.AsyncPostgresStore` is its asyncio twin.

    An ``append`` interrupted (``KeyboardInterrupt``) inside a transaction
    leaves the transaction aborted, to be rolled back: whether its statement
    took effect or not, nothing of the transaction can commit (the MySQL and
    SQLite stores roll back to a savepoint instead; a PostgreSQL append is
    one statement).
    """

    dialect_class = PostgresDialect
    decodes_rows = True

    def _cursor(self, tx: psycopg.Connection[Any], statement: Statement) -> psycopg.Cursor[Any]:
        if statement.alone and may_run_alone(tx):
            # Without psycopg's BEGIN, and so without a COMMIT to wait for.
            tx.autocommit = True
            try:
                cursor = self._cursor(tx, run_alone(statement))
            except BaseException:
                # Not possible while an interrupted reply is still coming:
                # the interruption, not that, is what the caller must see.
                with contextlib.suppress(Exception):
                    tx.autocommit = False
                raise
            tx.autocommit = False
            return cursor
        # execute_async (used by pupsourcing.aio.AsyncPostgresStore) runs
        # statements the same way on an AsyncConnection: keep the two in step.
        driver = _psycopg()
        if statement.decode is not None or statement.chunked:
            reader = driver.ReadCursor(tx, row_factory=read_rows(statement))
            return reader.read(statement.sql, statement.params)
        cursor = driver.Cursor(tx, row_factory=driver.tuple_row)
        return cursor.execute(statement.sql, statement.params, binary=True)

    def _in_transaction(self, tx: psycopg.Connection[Any]) -> bool:
        return in_transaction(tx)

    def _execute(self, tx: psycopg.Connection[Any], statement: Statement) -> list[Any]:
        if statement.eager:
            if statement.begin and opens_later(tx):
                begin_now(tx)
                return [(True,)]
            if statement.control == "commit" and may_commit_and_begin(tx):
                commit_and_begin(tx)
                return []
        return super()._execute(tx, statement)

    def _interrupted_append(self, tx: psycopg.Connection[Any]) -> None:
        # One statement, without a savepoint to undo it alone: whether it took
        # effect or not, abort the transaction so that none of it commits.
        if idle_in_transaction(tx):
            with contextlib.suppress(Exception):
                tx.execute(ABORT_SQL)

    def _push_listener(self) -> PsycopgListener:
        dialect = self.dialect
        assert isinstance(dialect, PostgresDialect)
        return PsycopgListener(dialect.notify_channel, dialect.events_table)
