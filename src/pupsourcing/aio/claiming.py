"""The asyncio twin of :class:`pupsourcing.projection.ClaimingRunner`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from pupsourcing._text import one_line
from pupsourcing.aio.processor import AsyncProcessor, close_quietly
from pupsourcing.core.errors import SchemaError
from pupsourcing.projection.claiming import (
    DEFAULT_LEASE_TTL,
    WAIT,
    LeaseOutage,
    check_runner_args,
    chosen_projections,
    next_look,
    no_leases_table,
    partition_log,
    share,
    stop_overdue,
)
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.protocols import AsyncProjection
from pupsourcing.store.async_base import AsyncSQLStore
from pupsourcing.store.leases import Lease, LeasePlans
from pupsourcing.store.plan import Plan

__all__ = ["AsyncClaimingRunner"]


T = TypeVar("T")


class _Partition:
    def __init__(
        self, processor: AsyncProcessor[Any], projection: AsyncProjection, renewed: float
    ) -> None:
        self.processor = processor
        self.stop = asyncio.Event()
        self.releasing = False
        self.lost = False
        self.renewed = renewed
        """``time.monotonic()`` when its last claim or renewal that worked began."""
        self.task = asyncio.ensure_future(self._work(projection))

    async def _work(self, projection: AsyncProjection) -> None:
        try:
            await self.processor.run(projection, stop=self.stop)
        finally:
            await self.processor.close()


class AsyncClaimingRunner:
    """:class:`pupsourcing.projection.ClaimingRunner` on asyncio: the same
    leases and balancing, one :class:`AsyncProcessor` task per claimed
    partition. ``db`` is a zero-argument coroutine function returning a new
    connection."""

    def __init__(
        self,
        db: Callable[[], Awaitable[Any]],
        store: Any,
        config: ProcessorConfig | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        owner: str | None = None,
    ) -> None:
        self.lease_ttl, self.owner = check_runner_args(db, lease_ttl, owner)
        self._db = db
        self._store = store
        self.config = config or ProcessorConfig()
        self._plans: LeasePlans = store.dialect.leases
        self._running: dict[tuple[str, int], _Partition] = {}
        self._log = self.config.get_logger()

    @property
    def total_partitions(self) -> int:
        """How many partitions the processes share (``config.total_partitions``)."""
        return self.config.total_partitions

    def held(self) -> dict[str, list[int]]:
        """The partitions this process runs now, by projection name."""
        held: dict[str, list[int]] = {}
        for name, key in sorted(self._running):
            held.setdefault(name, []).append(key)
        return held

    async def run(
        self,
        projections: AsyncProjection | Iterable[AsyncProjection],
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Claim, run and balance partitions until ``stop`` is set, then stop
        every partition after its batch and release the leases.

        A partition's processor that raises stops the others, and the error
        is raised here (as :meth:`pupsourcing.runner.Runner.run` does).
        """
        chosen = chosen_projections(projections, "AsyncClaimingRunner")
        stop = stop or asyncio.Event()
        conn: Any = None
        outage = LeaseOutage(self._log)
        error: BaseException | None = None
        pending: list[tuple[str, int]] = []
        total = self.total_partitions
        watchdog = asyncio.ensure_future(self._watch())
        try:
            while not stop.is_set() and error is None:
                pause = self.lease_ttl / 3
                try:
                    if conn is None:
                        conn = await self._lease_connection()
                        for p in chosen:
                            await self._drive(conn, self._plans.ensure(p.name, total))
                    await self._release_pending(conn, pending)
                    for p in chosen:
                        pause = min(pause, await self._balance(conn, p))
                    outage.ended()
                except SchemaError as exc:
                    error = exc  # a table to create, not an outage to wait out
                    break
                except Exception as exc:
                    outage.failed(exc, pause)
                    if not self._store.dialect.is_transient(exc):  # else rolled back, usable
                        await close_quietly(conn)
                        conn = None
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and not stop.is_set():
                    error = self._reap(pending)
                    if error is not None:
                        break
                    # Not wait_for: on Python 3.11 it swallows a cancellation
                    # that arrives as stop is set (the run would return).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await stop.wait()
        finally:
            watchdog.cancel()
            self._stop_all()
            try:
                await self._wait_for_partitions()
            finally:
                error = error or self._reap(pending)
                if no_leases_table(self._store, error):
                    await close_quietly(conn)
                else:
                    await self._release_all(conn, chosen)
        if error is not None:
            raise error

    async def _wait_for_partitions(self) -> None:
        """Wait until every partition has stopped after its batch. Cancelled
        meanwhile, cancel them and wait until each has rolled back (as
        :class:`~pupsourcing.aio.AsyncRunner` does), then raise: the leases
        are released after that, not left to expire."""
        tasks = [part.task for part in self._running.values()]
        if not tasks:
            return
        try:
            await asyncio.wait(tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise

    async def _release_pending(self, conn: Any, pending: list[tuple[str, int]]) -> None:
        """Free the leases of partitions whose processor has stopped."""
        while pending:
            name, key = pending[0]
            await self._drive(conn, self._plans.release(name, key, self.owner))
            pending.pop(0)
            label, fields = partition_log(self.config, name, key)
            self._log.info("projection %s: released", label, extra=fields)

    async def _release_all(self, conn: Any, projections: list[AsyncProjection]) -> None:
        """Give back every partition this process holds and its member rows
        (best effort: unreleased ones expire), on ``conn`` or, should that
        fail (a cancellation may have closed it), on a new connection; not
        again after a lock wait that timed out. A cancellation that cuts the
        release short is raised once it is done."""
        interrupted: BaseException | None = None
        for last in (False, True):
            try:
                if conn is None:
                    conn = await self._lease_connection()
                for p in projections:
                    await self._drive(conn, self._plans.release_all(p.name, self.owner))
                    await self._drive(conn, self._plans.leave(p.name, self.owner))
                self._log.info("partition leases released")
                break
            except BaseException as exc:
                await close_quietly(conn)
                conn = None
                if not isinstance(exc, Exception):
                    if interrupted is not None:
                        raise  # interrupted again: they expire
                    interrupted = exc
                elif last or self._store.dialect.is_transient(exc):  # (a lock: waited already)
                    self._log.warning(
                        "partition leases not released (they expire): %s", one_line(exc)
                    )
                    break
        await close_quietly(conn)
        if interrupted is not None:
            raise interrupted

    async def _watch(self) -> None:
        """Stop every partition whose lease is overdue (see
        :func:`~pupsourcing.projection.claiming.overdue`), as a task of its
        own: also while a lease statement waits."""
        while True:
            await asyncio.sleep(WAIT)
            stop_overdue(list(self._running.items()), self.lease_ttl, self.config, self._log)

    def _stop_all(self) -> None:
        for part in self._running.values():
            part.stop.set()
            part.releasing = True

    async def _lease_connection(self) -> Any:
        return await lease_connection(self._db, self._store, self.lease_ttl)

    async def _drive(self, conn: Any, plan: Plan[Any]) -> Any:
        return await drive_lease(self._store, conn, plan, self.lease_ttl)

    def _reap(self, pending: list[tuple[str, int]]) -> BaseException | None:
        error: BaseException | None = None
        for key, part in list(self._running.items()):
            if not part.task.done():
                continue
            del self._running[key]
            if part.task.cancelled():
                # Not by the runner, which stops partitions with their event:
                # the run is cancelled, as AsyncRunner's is.
                error = error or asyncio.CancelledError()
            elif part.task.exception() is not None:
                error = error or part.task.exception()
            if not part.lost:
                pending.append(key)
        return error

    async def _balance(self, conn: Any, projection: AsyncProjection) -> float:
        name, total, me, ttl = projection.name, self.total_partitions, self.owner, self.lease_ttl
        mine = {k: part for (n, k), part in self._running.items() if n == name}
        for key, part in sorted(mine.items()):
            if part.lost:
                continue
            began = time.monotonic()
            if await self._drive(conn, self._plans.renew(name, key, me, ttl)):
                part.renewed = began
            else:
                label, fields = partition_log(self.config, name, key)
                self._log.warning(
                    "projection %s: lease taken over; stopping it", label, extra=fields
                )
                part.stop.set()
                part.releasing = part.lost = True
        await self._drive(conn, self._plans.announce(name, me, ttl))
        leases: list[Lease] = await self._drive(conn, self._plans.list(name))
        active = sorted(k for k, part in mine.items() if not part.releasing)
        extra, more, free = share(total, me, active, leases)
        for key in extra:
            label, fields = partition_log(self.config, name, key)
            self._log.info("projection %s: releasing it to balance", label, extra=fields)
            mine[key].stop.set()
            mine[key].releasing = True
        for key in free:
            if more <= 0:
                break
            if key in mine:
                continue
            began = time.monotonic()
            if await self._drive(conn, self._plans.acquire(name, key, me, ttl)):
                config = dataclasses.replace(self.config, partition_key=key)
                processor = AsyncProcessor(self._db, self._store, config)
                self._running[(name, key)] = _Partition(processor, projection, began)
                label, fields = partition_log(self.config, name, key)
                self._log.info("projection %s: claimed by %s", label, me, extra=fields)
                more -= 1
        return next_look(ttl, me, leases)


async def lease_connection(
    db: Callable[[], Awaitable[Any]], store: AsyncSQLStore[Any], ttl: float
) -> Any:
    """A new connection from ``db`` for the lease statements of a lease of
    ``ttl`` seconds, its session prepared for them (see :meth:`LeasePlans.prepare
    <pupsourcing.store.leases.LeasePlans.prepare>`); closed if that fails."""
    conn = await db()
    try:
        await drive_lease(store, conn, store.dialect.leases.prepare(), ttl)
    except BaseException:
        await close_quietly(conn)
        raise
    return conn


async def drive_lease(store: AsyncSQLStore[Any], conn: Any, plan: Plan[T], ttl: float) -> T:
    """``plan`` as one committed lease transaction on ``conn``, for a lease
    of ``ttl`` seconds (see :meth:`LeasePlans.transaction
    <pupsourcing.store.leases.LeasePlans.transaction>`)."""
    try:
        result = await store._run(conn, store.dialect.leases.transaction(plan, ttl))
    except BaseException:
        # The rollback of a connection that failed, or that asyncmy closed
        # when a cancellation cut its reply short, fails too: its error
        # must not take the place of the one raised (a cancellation
        # would become a lease error, retried).
        with contextlib.suppress(Exception):
            await store._end_transaction(conn, commit=False)
        raise
    await store._end_transaction(conn, commit=True)
    return result
