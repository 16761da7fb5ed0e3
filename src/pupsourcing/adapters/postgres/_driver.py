"""How statements run on psycopg connections, blocking and asyncio: server-side
binding, binary results, and event rows decoded as psycopg reads them."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from pupsourcing.store.plan import RowDecoder, Statement

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import RowMaker

    from pupsourcing.adapters.postgres._reads import AsyncReadCursor, ReadCursor


def in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a psycopg connection has a transaction open or will open one
    for the next statement. Appends are single statements, so autocommit
    needs no BEGIN; this answers for plans that ask anyway."""
    return not conn.autocommit or conn.info.transaction_status != 0  # 0: IDLE


ABORT_SQL = (
    "DO $$ BEGIN RAISE EXCEPTION 'pupsourcing: an append was interrupted in this "
    "transaction; roll it back'; END $$"
)
"""Aborts the transaction it runs in: after an interrupted append, which is
one statement without a savepoint to undo it alone, so that none of the
transaction commits whether the append took effect or not."""


def idle_in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` is idle inside a transaction (not aborted, not in
    autocommit mode between statements): one :data:`ABORT_SQL` would abort."""
    return bool(conn.info.transaction_status == 2)  # INTRANS


def opens_later(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` has no transaction open and will open one itself
    with its next statement (not in autocommit mode)."""
    return not conn.autocommit and conn.info.transaction_status == 0  # IDLE


def begin_now(conn: psycopg.Connection[Any]) -> None:
    """Open the transaction on ``conn`` (see :func:`opens_later`) as its next
    statement would: the BEGIN psycopg sends, with the connection's own
    isolation level and modes, and nothing else."""
    if _begins_alone():
        conn.wait(conn._start_query())
    else:  # psycopg sends its BEGIN first
        conn.execute("SELECT")


async def begin_now_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """:func:`begin_now` on an asyncio connection."""
    if _begins_alone():
        await conn.wait(conn._start_query())
    else:
        await conn.execute("SELECT")


@lru_cache(maxsize=1)
def _begins_alone() -> bool:
    """Whether psycopg's connections have the (private) step that sends
    their BEGIN, as every release from 3.0 to 3.3 has."""
    import psycopg

    return all(
        hasattr(cls, name)
        for cls in (psycopg.Connection, psycopg.AsyncConnection)
        for name in ("_start_query", "wait")
    )


def _plain_begin(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether psycopg's BEGIN on ``conn`` is a plain one (no isolation
    level, read-only or deferrable mode of its own)."""
    return conn.isolation_level is None and conn.read_only is None and conn.deferrable is None


def may_run_alone(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a :attr:`Statement.alone` may run as its own transaction on
    ``conn``: no transaction is open, and psycopg's BEGIN would be a plain one."""
    return opens_later(conn) and _plain_begin(conn)


def may_commit_and_begin(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether :func:`commit_and_begin` may end the transaction open on
    ``conn`` (not in autocommit mode, where psycopg sends no BEGIN) and
    open the next as psycopg would."""
    in_transaction = conn.info.transaction_status == 2  # INTRANS
    return not conn.autocommit and in_transaction and _plain_begin(conn)


_COMMIT_AND_BEGIN = "COMMIT; BEGIN"


def commit_and_begin(conn: psycopg.Connection[Any]) -> None:
    """COMMIT and BEGIN in one round trip: a query without parameters (and
    never prepared) goes as a simple query, which may hold several."""
    _psycopg().Cursor(conn).execute(_COMMIT_AND_BEGIN, prepare=False).close()


async def commit_and_begin_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """:func:`commit_and_begin` on an asyncio connection."""
    cursor = _psycopg().AsyncCursor(conn)
    await cursor.execute(_COMMIT_AND_BEGIN, prepare=False)
    await cursor.close()


def run_alone(statement: Statement) -> Statement:
    """``statement`` as it runs when :func:`may_run_alone` allowed it."""
    return replace(statement, alone=False)


def _decoding_rows(decode: RowDecoder) -> Callable[[Any], RowMaker[Any]]:
    """The psycopg row factory that decodes each row with ``decode.one`` as
    psycopg reads it, whatever the connection's own ``row_factory``."""
    one = decode.one
    return lambda cursor: one


def read_rows(statement: Statement) -> Callable[[Any], RowMaker[Any]]:
    """The row factory of a read through the cursors of
    :mod:`~pupsourcing.adapters.postgres._reads`: decoding when the statement
    decodes, else tuples (a processor's batch, decoded as it is handled)."""
    if statement.decode is None:
        return _psycopg().tuple_row
    return _decoding_rows(statement.decode)


class _Psycopg(NamedTuple):
    Cursor: type[psycopg.Cursor[Any]]
    AsyncCursor: type[psycopg.AsyncCursor[Any]]
    ReadCursor: type[ReadCursor]
    AsyncReadCursor: type[AsyncReadCursor]
    tuple_row: Callable[[Any], RowMaker[Any]]


@lru_cache(maxsize=1)
def _psycopg() -> _Psycopg:
    """psycopg's server-side-binding cursor classes (whatever the
    connection's own ``cursor_factory``), the cursors for event reads of
    :mod:`~pupsourcing.adapters.postgres._reads` and psycopg's tuple row
    factory, imported on first use."""
    import psycopg
    from psycopg.rows import tuple_row

    from pupsourcing.adapters.postgres import _reads as postgres_reads

    return _Psycopg(
        psycopg.Cursor,
        psycopg.AsyncCursor,
        postgres_reads.ReadCursor,
        postgres_reads.AsyncReadCursor,
        tuple_row,
    )


async def execute_async(
    conn: psycopg.AsyncConnection[Any], statement: Statement
) -> psycopg.AsyncCursor[Any]:
    """Run ``statement`` on ``conn`` as :class:`PostgresStore` runs it on a
    blocking connection, and return the cursor to fetch from and close."""
    if statement.alone and may_run_alone(conn):
        await conn.set_autocommit(True)
        try:
            alone = await execute_async(conn, run_alone(statement))
        except BaseException:  # (as PostgresStore._cursor)
            with contextlib.suppress(Exception):
                await conn.set_autocommit(False)
            raise
        await conn.set_autocommit(False)
        return alone
    driver = _psycopg()
    cursor: psycopg.AsyncCursor[Any]
    run: Awaitable[psycopg.AsyncCursor[Any]]
    if statement.decode is not None or statement.chunked:
        cursor = driver.AsyncReadCursor(conn, row_factory=read_rows(statement))
        run = cursor.read(statement.sql, statement.params)
    else:
        cursor = driver.AsyncCursor(conn, row_factory=driver.tuple_row)
        run = cursor.execute(statement.sql, statement.params, binary=True)
    try:
        await run
    except BaseException:
        await cursor.close()
        raise
    return cursor
