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

Behind a connection pooler in transaction mode (PgBouncer) ``LISTEN``
succeeds but holds for the server connection that ran it, which goes back
to the pool when the transaction ends: no notification reaches the
processor. A pooler shows in the backend id it gave the client, which is
not the server's (``pg_backend_pid()``, read with the table's OID). Then
the listener checks, once, with a probe: another connection of its own (the
same connection parameters) notifies the channel with a payload of
:data:`PROBE` and a token, which appends never send and no processor counts.
:attr:`_Counting.probe` holds the token until the probe arrives while the
processor waits (see :data:`PROBE_TRIES`); the waiter
tells the user when it does not (see
:mod:`pupsourcing.projection._waiter`). A probe sent on the processor's
connection itself would prove nothing: PostgreSQL hands a session its own
notifications at its commit, and PgBouncer gives the next transaction the
listening server connection again when the pool is quiet.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


_OID_SQL = "SELECT to_regclass(%s)::oid::text, pg_backend_pid()"
_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
PROBE = "pupsourcing-probe"
"""How a probe's payload begins."""
PROBE_TRIES = 5
"""Probes sent at most: one that arrives with the reply to a query of the
processor's (not while it waits) is sent again, as transaction pooling
delivers a notification then when it happens to give the processor the
listening server connection."""


class _Counting:
    def __init__(self, channel: str, events_table: str) -> None:
        self.received = 0
        self.probe: str | None = None
        """The payload of the probe sent (or being sent) and not arrived yet."""
        self.probe_sent: float | None = None
        """When the probe was committed (``time.monotonic()``)."""
        self.unprobed: Exception | None = None
        """Why the probe could not be sent."""
        self._channel = channel
        self._sql = f'LISTEN "{channel}"'
        self._unlisten_sql = f'UNLISTEN "{channel}"'
        self._table = events_table
        self._payloads: set[str] | None = None
        """The payloads counted; ``None``: all (the table was not found)."""
        self._conninfo = ""
        self._tries = 0
        self._waiting = False
        """Whether :meth:`_drain` runs (the processor waits, in no query)."""

    def _heard(self, row: Any, conn: Any) -> bool:
        """Take the OID of :data:`_OID_SQL`'s ``row``; whether it shows a
        pooler (the server's backend is not the one ``conn`` was told)."""
        self._payloads = None if row is None or row[0] is None else {"", row[0]}
        self.probe = self.probe_sent = self.unprobed = None
        told = getattr(getattr(conn, "info", None), "backend_pid", None)
        return row is not None and told is not None and int(row[1]) != int(told)

    def _start_probing(self, conn: Any) -> None:
        """Send the first probe, on a connection with ``conn``'s parameters."""
        from psycopg.conninfo import make_conninfo

        params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val}
        self._conninfo, self._tries = make_conninfo("", **params), 0
        self._probe_again()

    def _probe_again(self) -> None:
        self._tries += 1
        self.probe, self.probe_sent = f"{PROBE} {uuid.uuid4().hex}", None
        self._spawn(self._conninfo, (self._channel, self.probe))

    def _spawn(self, conninfo: str, args: tuple[str, str]) -> None:
        """Send a probe (``pg_notify`` ``args``) without waiting for it."""
        raise NotImplementedError

    def _sent(self, payload: str, error: Exception | None) -> None:
        if payload != self.probe:  # an earlier connection's probe, or arrived
            return
        if error is None:
            self.probe_sent = time.monotonic()
        else:
            self.probe, self.unprobed = None, error

    def _count(self, notify: Any) -> None:
        if notify.payload.startswith(PROBE):  # never an append
            if notify.payload != self.probe:
                return
            if self._waiting or self._tries >= PROBE_TRIES:
                self.probe = None  # arrived
            else:
                self._probe_again()
            return
        if self._payloads is None or notify.payload in self._payloads:
            self.received += 1

    def _drain(self, conn: Any) -> None:
        """Read what the socket has and hand each notification in it to
        psycopg's dispatch, as psycopg does after a query: every notify
        handler of the connection gets it, :meth:`_count` and the caller's own
        (the connection may be the caller's, listening on channels of its own)."""
        pgconn = conn.pgconn
        pgconn.consume_input()  # raises when the connection broke
        self._waiting = True
        try:
            while (notify := pgconn.notifies()) is not None:
                if pgconn.notify_handler is not None:
                    pgconn.notify_handler(notify)
        finally:
            self._waiting = False


class PsycopgListener(_Counting):
    """:class:`~pupsourcing.store._appended.Listener` on a blocking psycopg connection."""

    def listen(self, conn: psycopg.Connection[Any]) -> None:
        pooled = self._heard(conn.execute(_OID_SQL, (self._table,)).fetchone(), conn)
        conn.add_notify_handler(self._count)
        try:
            conn.execute(self._sql)
            if not conn.autocommit:
                conn.commit()
        except BaseException:  # a KeyboardInterrupt too
            self._undo(conn)
            raise
        if pooled:
            self._start_probing(conn)

    def _spawn(self, conninfo: str, args: tuple[str, str]) -> None:
        # From a thread: a full pool must not hold the processor up.
        name = "pupsourcing-push-probe"
        threading.Thread(target=self._send, args=(conninfo, args), name=name, daemon=True).start()

    def _send(self, conninfo: str, args: tuple[str, str]) -> None:
        import psycopg

        try:
            with psycopg.Connection.connect(
                conninfo, autocommit=True, prepare_threshold=None
            ) as other:
                other.execute(_NOTIFY_SQL, args)
        except Exception as exc:
            self._sent(args[1], exc)
        else:
            self._sent(args[1], None)

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
        row = await (await conn.execute(_OID_SQL, (self._table,))).fetchone()
        pooled = self._heard(row, conn)
        conn.add_notify_handler(self._count)
        try:
            await conn.execute(self._sql)
            if not conn.autocommit:
                await conn.commit()
        except BaseException:  # a cancellation too
            await self._undo(conn)
            raise
        if pooled:
            self._start_probing(conn)

    def _spawn(self, conninfo: str, args: tuple[str, str]) -> None:
        # In a task: a full pool must not hold the processor up.
        self._probing = asyncio.get_running_loop().create_task(self._send(conninfo, args))

    async def _send(self, conninfo: str, args: tuple[str, str]) -> None:
        import psycopg

        try:
            other = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, prepare_threshold=None
            )
            async with other:
                await other.execute(_NOTIFY_SQL, args)
        except Exception as exc:
            self._sent(args[1], exc)
        else:
            self._sent(args[1], None)

    _probing: asyncio.Task[None] | None = None

    async def unlisten(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None
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
