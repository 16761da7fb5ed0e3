"""The asyncio projection processor: the async counterpart of
:class:`pupsourcing.projection.Processor`.

Both carry out the same plans (:mod:`pupsourcing.projection.core` around
:func:`pupsourcing.projection.batch.step`): the same batches, checkpoint
compare-and-set, safe horizon, scopes, partitions, logging and reconnect
back-off. Here each statement is awaited, and so is the projection's handler
when it is a coroutine function.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, overload

from pupsourcing.aio._waiter import AsyncWaiter, pause
from pupsourcing.core.errors import ProjectionError, StoredValueError
from pupsourcing.projection.batch import Handle, Subscription
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.core import (
    Connect,
    Disconnect,
    Instruction,
    Pause,
    ProcessorBase,
    ProcessorPlan,
)
from pupsourcing.projection.protocols import AsyncProjection
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.plan import Statement, drive_async

__all__ = ["AsyncProcessor"]

ConnT = TypeVar("ConnT", bound=Any)
T = TypeVar("T")


class AsyncProcessor(ProcessorBase[ConnT, "AsyncSQLStore[Any]"]):
    """Feeds a projection the store's events in global-position order, on
    asyncio: the counterpart of :class:`pupsourcing.projection.Processor`.

    ``db`` is an asyncio connection the processor may use exclusively, or a
    zero-argument callable returning one (or an awaitable of one, such as
    ``lambda: psycopg.AsyncConnection.connect(dsn)`` or ``lambda:
    connect_async(path)``); then the processor opens its connection lazily,
    closes it on :meth:`close`, and reconnects with bounded exponential
    back-off when the connection is lost.

    The projection's ``handle(event, tx)`` may be ``async def`` (awaited) or a
    plain ``def``; ``tx`` is the processor's asyncio connection, inside the
    transaction that advances the checkpoint, so read-model writes made
    through it are applied exactly once. A handler that raises rolls the
    batch back and :class:`~pupsourcing.ProjectionError` is raised. A
    projection never skips a committed event, even when concurrent writers
    commit out of position order: it reads only up to the safe horizon
    (:mod:`pupsourcing.store.horizon`).

    Cancelling :meth:`run` or :meth:`catch_up` mid-batch leaves the checkpoint
    where the last committed batch put it: the open transaction is rolled
    back (a connection the processor opened is closed instead).
    """

    _store_type = AsyncSQLStore
    _store_kind = (
        "an asyncio pupsourcing store (AsyncPostgresStore, AsyncMySQLStore, "
        "AsyncSQLiteStore; the blocking stores go with pupsourcing.projection.Processor)"
    )

    @overload
    def __init__(
        self,
        db: Callable[[], Awaitable[ConnT]],
        store: AsyncSQLStore[Any],
        config: ProcessorConfig | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self, db: ConnT, store: AsyncSQLStore[Any], config: ProcessorConfig | None = None
    ) -> None: ...

    def __init__(
        self, db: Any, store: AsyncSQLStore[Any], config: ProcessorConfig | None = None
    ) -> None:
        super().__init__(db, store, config)
        self._waiter = AsyncWaiter(
            store.config.events_table,
            store._push_listener(),
            self._logger,
            poll_interval=self.config.poll_interval,
        )

    # -- lifecycle -------------------------------------------------------------

    async def connection(self) -> ConnT:
        """The connection batches run on (opened from the factory if needed)."""
        if self._conn is None:
            assert self._factory is not None
            opened = self._factory()
            if inspect.isawaitable(opened):
                opened = await _opening(opened)
            self._conn = opened
        conn: ConnT = self._conn
        return conn

    async def close(self) -> None:
        """Close the connection if the processor opened it; never the caller's."""
        conn = self._release()
        if conn is not None:
            with self._closing():
                closed = conn.close()  # a coroutine for psycopg and aiosqlite, not asyncmy
                if inspect.isawaitable(closed):
                    await closed

    async def __aenter__(self) -> AsyncProcessor[ConnT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- processing ------------------------------------------------------------

    async def run(self, projection: AsyncProjection, *, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set, sleeping ``poll_interval`` when
        idle. Raises :class:`ProjectionError` when the handler fails (the
        failed batch is rolled back, the checkpoint stays before it). A lock
        time-out or deadlock, and with a connection factory a lost
        connection, is retried instead, whether it hits the processor's
        statements or the handler's writes through ``tx``."""
        stop = stop or asyncio.Event()
        sub = self._core.subscription(projection)
        try:
            await self._drive(projection, sub, self._core.run(sub), stop)
        finally:
            await self._waiter.release(self._conn)

    async def catch_up(self, projection: AsyncProjection) -> int:
        """Process until no committed event is left for the projection; return
        how many events were handed to ``handle``. Waits for transactions
        that hold earlier positions to finish rather than skip their events."""
        sub = self._core.subscription(projection)
        return await self._drive(projection, sub, self._core.catch_up(sub), None)

    async def replay_dead_letters(self, projection: AsyncProjection) -> int:
        """Hand each event recorded as this processor's dead letter of
        ``projection`` (under its checkpoint name, with the partition suffix)
        to ``handle`` again, one transaction each, and delete the records that
        succeed; a record that fails again stays, its attempts counted.
        Returns how many succeeded."""
        sub = self._core.subscription(projection)
        return await self._drive(projection, sub, self._core.replay_dead_letters(sub), None)

    async def _drive(
        self,
        projection: AsyncProjection,
        sub: Subscription,
        plan: ProcessorPlan[T],
        stop: asyncio.Event | None,
    ) -> T:
        execute = self.store._execute

        async def perform(instruction: Instruction) -> Any:
            if type(instruction) is Statement:
                return await execute(self._conn, instruction)
            if type(instruction) is Handle:
                return await self._handle_events(projection, instruction)
            if type(instruction) is Pause:
                if instruction.wake and stop is not None:
                    wait = self._waiter.wait(self._conn, instruction.seconds, stop, sub.label)
                    return await wait
                return await pause(instruction.seconds, stop)
            if type(instruction) is Connect:
                return await self.connection()
            if type(instruction) is Disconnect:
                return await self.close()
            raise TypeError(f"unknown instruction {instruction!r}")

        try:
            return await drive_async(plan, perform)
        except Exception:
            raise  # the plan has rolled back what it had to
        except BaseException:
            # A cancellation (or KeyboardInterrupt, SystemExit) went past the
            # plan: the batch's transaction may still be open, and the next
            # batch on this connection would commit its partial writes.
            sub.checkpoint = None  # a commit may have been cut short
            kept, sub.kept, sub.began_next = sub.kept, None, False
            await self._abandon_transaction(kept)
            raise

    async def _handle_events(self, projection: AsyncProjection, events: Handle) -> None:
        """Hand a batch's events to ``projection`` inside the batch's
        transaction; a failure is raised as :class:`ProjectionError`. (The
        NATS relay overrides this to publish the batch at once.)"""
        conn = self._conn
        handle = projection.handle
        # A row that fails to decode is no handler failure.
        for chunk in events.chunks():
            for event in chunk:
                try:
                    result = handle(event, conn)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except StoredValueError:
                    raise  # a field the handler read cannot be decoded: idem
                except Exception as exc:
                    raise ProjectionError(projection.name, event.global_position) from exc

    async def _abandon_transaction(self, kept: object) -> None:
        """After an interruption: a connection the processor opened is closed
        (its driver may be midway through a reply), the caller's is rolled back
        and given back what the batches had set on it (``kept``)."""
        if self._conn is None:
            return
        if self._factory is not None:
            await self.close()
            return
        with contextlib.suppress(Exception):
            await self.store._end_transaction(self._conn, commit=False)
        if kept is not None:
            with contextlib.suppress(Exception):
                await self.store._run(self._conn, self.store.dialect.release_batch(kept))


_closing_late: set[asyncio.Task[Any]] = set()
"""Closes of connections that arrived after their opener was cancelled
(held here until done: the event loop keeps only weak references)."""


async def _opening(opened: Awaitable[T]) -> T:
    """The connection ``opened`` gives. Cancelled meanwhile, the caller
    returns at once, and the connection is closed when it arrives: the
    driver may go on opening it (aiosqlite's thread does), and nothing
    else would ever close it."""
    task = asyncio.ensure_future(opened)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_close_late)
        raise


def _close_late(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    closing = asyncio.ensure_future(close_quietly(task.result()))
    _closing_late.add(closing)
    closing.add_done_callback(_closing_late.discard)


async def close_quietly(conn: Any) -> None:
    """Close ``conn`` if any (its driver's ``close`` may be a coroutine or
    not); a connection that already failed may fail to close: ignored."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        closed = conn.close()
        if inspect.isawaitable(closed):
            await closed
