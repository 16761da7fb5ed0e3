"""Waiting for PostgreSQL's append notifications on a processor's psycopg
connection (its own connection: no extra one per processor).

Every append notifies the channel of its events table
(:func:`~pupsourcing.adapters.postgres._dialect.notify_channel`) in the
append statement itself; the server delivers the notification when the
append commits. A processor's connection ``LISTEN``\\ s once (committed) and
waits between batches, outside any transaction, for its socket to have
input. A notify handler counts what arrives while batches run, which also
keeps psycopg from queueing every notification of a long busy spell.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


class _Counting:
    def __init__(self, channel: str) -> None:
        self.received = 0
        self._sql = f'LISTEN "{channel}"'

    def _count(self, notify: object) -> None:
        self.received += 1

    def _drain(self, conn: Any) -> None:
        """Read what the socket has and count the notifications in it."""
        pgconn = conn.pgconn
        pgconn.consume_input()  # raises when the connection broke
        while pgconn.notifies() is not None:
            self.received += 1


class PsycopgListener(_Counting):
    """:class:`~pupsourcing.store._appended.Listener` on a blocking psycopg connection."""

    def listen(self, conn: psycopg.Connection[Any]) -> None:
        conn.add_notify_handler(self._count)
        conn.execute(self._sql)
        if not conn.autocommit:
            conn.commit()

    def wait(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        readable, _, _ = select.select([conn.fileno()], [], [], max(timeout, 0.0))
        if readable:
            self._drain(conn)


class AsyncPsycopgListener(_Counting):
    """:class:`~pupsourcing.store._appended.AsyncListener` on a psycopg ``AsyncConnection``."""

    async def listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.add_notify_handler(self._count)
        await conn.execute(self._sql)
        if not conn.autocommit:
            await conn.commit()

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
