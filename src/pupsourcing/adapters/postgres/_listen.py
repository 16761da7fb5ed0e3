"""Waiting for PostgreSQL's append notifications on a processor's psycopg
connection (its own connection: no extra one per processor).

Every append notifies the channel of its events table
(:func:`~pupsourcing.adapters.postgres._dialect.notify_channel`) in the
append statement itself; the server delivers the notification when the
append commits. A processor's connection ``LISTEN``\\ s once (committed) and
waits between batches, outside any transaction, for its socket to have
input; ``UNLISTEN`` when the processor stops gives the connection back as
it was. A notify handler counts what arrives while batches run, which also
keeps psycopg from queueing every notification of a long busy spell.

Same-named events tables in other schemas of the database notify the same
channel; the payload, the table's OID (looked up when listening), tells
them apart, so their appends wake no processor of this table (an empty
payload, as older versions sent, counts).
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


_OID_SQL = "SELECT to_regclass(%s)::oid::text"


class _Counting:
    def __init__(self, channel: str, events_table: str) -> None:
        self.received = 0
        self._sql = f'LISTEN "{channel}"'
        self._unlisten_sql = f'UNLISTEN "{channel}"'
        self._table = events_table
        self._payloads: set[str] | None = None
        """The payloads counted; ``None``: all (the table was not found)."""

    def _heard(self, row: Any) -> None:
        self._payloads = None if row is None or row[0] is None else {"", row[0]}

    def _count(self, notify: Any) -> None:
        if self._payloads is None or notify.payload in self._payloads:
            self.received += 1

    def _drain(self, conn: Any) -> None:
        """Read what the socket has and hand each notification in it to
        psycopg's dispatch, as psycopg does after a query: every notify
        handler of the connection gets it, :meth:`_count` and the caller's own
        (the connection may be the caller's, listening on channels of its own)."""
        pgconn = conn.pgconn
        pgconn.consume_input()  # raises when the connection broke
        while (notify := pgconn.notifies()) is not None:
            if pgconn.notify_handler is not None:
                pgconn.notify_handler(notify)


class PsycopgListener(_Counting):
    """:class:`~pupsourcing.store._appended.Listener` on a blocking psycopg connection."""

    def listen(self, conn: psycopg.Connection[Any]) -> None:
        self._heard(conn.execute(_OID_SQL, (self._table,)).fetchone())
        conn.add_notify_handler(self._count)
        try:
            conn.execute(self._sql)
            if not conn.autocommit:
                conn.commit()
        except BaseException:  # a KeyboardInterrupt too
            self._undo(conn)
            raise

    def unlisten(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(self._unlisten_sql)
            if not conn.autocommit:
                conn.commit()
        except BaseException:
            self._undo(conn)
            raise
        conn.remove_notify_handler(self._count)  # last: it takes what came meanwhile

    def _undo(self, conn: psycopg.Connection[Any]) -> None:
        """``listen`` or ``unlisten`` was interrupted (a KeyboardInterrupt, a
        cancellation) or failed, maybe once its statement took effect: roll
        back what is uncommitted, UNLISTEN (a no-op if no LISTEN took
        effect) and remove the notify handler, so that the connection (maybe
        the caller's) is left as it was, as far as it still works."""
        try:
            if _in_transaction(conn):
                conn.rollback()
            conn.execute(self._unlisten_sql)
            if not conn.autocommit:
                conn.commit()
        except Exception:  # a lost connection listens no more
            pass
        finally:
            conn.remove_notify_handler(self._count)

    def wait(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        if _readable(conn.fileno(), max(timeout, 0.0)):
            self._drain(conn)


def _in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` is inside a transaction (maybe a failed one)."""
    from psycopg import pq

    return conn.info.transaction_status != pq.TransactionStatus.IDLE


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` has input within ``timeout`` seconds. ``poll`` where
    there is one: ``select`` refuses descriptors past 1023, which a process
    with many files or sockets open hands out."""
    if not hasattr(select, "poll"):  # Windows: no such limit on sockets
        return bool(select.select([fd], [], [], timeout)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class AsyncPsycopgListener(_Counting):
    """:class:`~pupsourcing.store._appended.AsyncListener` on a psycopg ``AsyncConnection``."""

    async def listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._heard(await (await conn.execute(_OID_SQL, (self._table,))).fetchone())
        conn.add_notify_handler(self._count)
        try:
            await conn.execute(self._sql)
            if not conn.autocommit:
                await conn.commit()
        except BaseException:  # a cancellation too
            await self._undo(conn)
            raise

    async def unlisten(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await conn.execute(self._unlisten_sql)
            if not conn.autocommit:
                await conn.commit()
        except BaseException:
            await self._undo(conn)
            raise
        conn.remove_notify_handler(self._count)  # last: it takes what came meanwhile

    async def _undo(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """As :meth:`PsycopgListener._undo`."""
        try:
            if _in_transaction(conn):
                await conn.rollback()
            await conn.execute(self._unlisten_sql)
            if not conn.autocommit:
                await conn.commit()
        except Exception:  # a lost connection listens no more
            pass
        finally:
            conn.remove_notify_handler(self._count)

    async def wait(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await ready
        except TimeoutError:
            return
        finally:
            loop.remove_reader(fd)
        self._drain(conn)
