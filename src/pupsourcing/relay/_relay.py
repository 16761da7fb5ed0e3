"""The relay: the projection engine reads the store, JetStream receives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pupsourcing._extras import needs_extra
from pupsourcing._outage import Outage
from pupsourcing._text import one_line
from pupsourcing.aio._waiter import pause
from pupsourcing.aio.processor import AsyncProcessor
from pupsourcing.core.events import PersistedEvent
from pupsourcing.projection.batch import Handle
from pupsourcing.projection.claiming import STOP_AFTER
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.core import (
    RECONNECT_INITIAL_DELAY,
    RECONNECT_MAX_DELAY,
    RECONNECT_WARNING,
)
from pupsourcing.projection.protocols import AsyncProjection
from pupsourcing.relay._lease import LEASE_TTL, STANDBY_LOOK, RelayLease
from pupsourcing.relay._link import ConnectionLost, Link
from pupsourcing.relay._subject import check_prefix
from pupsourcing.store.async_base import AsyncSQLStore

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 500


class _Relayed:
    """The projection the processor runs: its name is the checkpoint's."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, event: PersistedEvent, tx: Any) -> None:  # pragma: no cover
        raise NotImplementedError("the relay publishes whole batches")


class _RelayProcessor(AsyncProcessor[Any]):
    """An :class:`AsyncProcessor` whose batches go to JetStream: the batch's
    checkpoint moves only after every message of it is acknowledged."""

    link: Link

    async def _handle_events(self, projection: AsyncProjection, events: Handle) -> None:
        if not events:
            return
        duplicates = await _nats(self.link.publish(events))
        if duplicates:
            self._logger.info(
                "relay %s: JetStream already held %d of %d events (not stored twice)",
                projection.name,
                duplicates,
                len(events),
            )


class NatsRelay:
    """Publishes every event of the store, in global-position order, to the
    JetStream stream ``stream`` (created when missing, with subjects
    ``PREFIX.>``), on asyncio.

    ``db`` and ``store`` are as for :class:`~pupsourcing.aio.AsyncProcessor`:
    an asyncio connection the relay may use exclusively, or a zero-argument
    callable returning one (then a lost database connection is re-opened
    with back-off). ``servers`` is a NATS URL or a list of them;
    ``connect_options`` go to ``nats.connect`` (credentials, TLS, ...).

    Each event becomes one message on :func:`~pupsourcing.relay.subject_for`
    with the payload as data and the headers listed on the "Publishing to
    NATS" page of the documentation. Events are read like a projection's
    (batches of ``batch_size`` up to the safe horizon, so none is skipped when
    writers commit out of order) under the checkpoint ``relay_<name>``; a
    batch is published without waiting in between and its checkpoint moves
    only once JetStream acknowledged every message of it. Messages carry
    ``Nats-Msg-Id`` (the event id) and on every (re)connect the relay resumes
    after the later of its checkpoint and the last event the stream holds
    (when that is later, once the stream is found to hold every event in
    between: :class:`~pupsourcing.relay.StreamGap` otherwise), so
    a relay killed at any moment and restarted stores every event once; nor
    does it publish again a batch JetStream acknowledged whose checkpoint
    failed to commit (a lost database connection), however long it takes to
    commit it.

    A lost NATS connection is dropped and opened again with back-off
    (``RECONNECT_INITIAL_DELAY`` doubling up to ``RECONNECT_MAX_DELAY``); so
    is a lost database connection when ``db`` is a factory. Errors JetStream
    returns for a message (other than "unavailable") are raised, and so is
    an event whose message (payload and headers) exceeds the server's
    ``max_payload`` or the stream's ``max_msg_size``, before it is sent.
    Called again after an error (or a cancellation), :meth:`run` and
    :meth:`catch_up` start as a new relay would: connect, read the stream's
    limits and resume from what the stream holds.

    Copies of one relay (one ``name``) may run at once, as in a rolling
    deploy: when ``db`` is a factory, only the copy holding the lease
    ``relay_<name>`` in the store's leases table publishes (it renews it
    every ``lease_ttl / 3`` seconds on a connection of its own); the others
    wait as standby (:meth:`run` and :meth:`catch_up` alike) and one takes
    over within about ``lease_ttl`` seconds after the active copy stopped
    (at once when it stopped cleanly). Becoming active or standby is logged
    at INFO. In any case the checkpoint only moves forward, by
    compare-and-set.
    """

    def __init__(
        self,
        db: Any,
        store: AsyncSQLStore[Any],
        *,
        stream: str,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        subject_prefix: str = "events",
        name: str = "relay",
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval: float = 0.1,
        ack_timeout: float = 10.0,
        connect_options: Mapping[str, Any] | None = None,
        logger: logging.Logger | None = None,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        with needs_extra("nats", "pupsourcing.relay.NatsRelay"):
            import nats  # noqa: F401

        if not isinstance(stream, str) or not stream or any(c in stream for c in ".*> \t"):
            raise ValueError(f"stream must be a JetStream stream name, got {stream!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if not ack_timeout > 0:
            raise ValueError(f"ack_timeout must be positive, got {ack_timeout!r}")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float):
            raise ValueError(f"lease_ttl must be a number of seconds, got {lease_ttl!r}")
        if not 0.3 <= lease_ttl <= 3600:
            raise ValueError(f"lease_ttl must be from 0.3 to 3600 seconds, got {lease_ttl!r}")
        self.stream = stream
        self.subject_prefix = check_prefix(subject_prefix)
        self.name = name
        self.logger = logger or logging.getLogger("pupsourcing.relay")
        config = ProcessorConfig(batch_size=batch_size, poll_interval=poll_interval, logger=logger)
        self._processor = _RelayProcessor(db, store, config)
        self._link = self._processor.link = Link(
            servers,
            stream,
            self.subject_prefix,
            ack_timeout=ack_timeout,
            options=connect_options or {},
            logger=self.logger,
        )
        self._projection = _Relayed(self.checkpoint_name)
        # The relay writes nothing but its checkpoint: every batch, the first
        # too, may take SQLite's write lock at that write rather than hold
        # it while JetStream acknowledges (the lease's renewal and the
        # application's writers would wait for NATS).
        self._processor._core.subscription(self._projection).lazy_commit = True
        self._synced = False
        self._outage = Outage(RECONNECT_WARNING)
        """NATS (or the database outside the processor) failing, see :meth:`_retrying`."""
        self._lease_outage = Outage(RECONNECT_WARNING)
        """The lease's statements failing, taking or renewing it."""
        factory = self._processor._factory
        self._lease = (
            None
            if factory is None
            else RelayLease(
                factory, self._processor.store, self.checkpoint_name, self.logger, float(lease_ttl)
            )
        )

    @property
    def checkpoint_name(self) -> str:
        """``relay_<name>``: where the relay's position is kept (shown by
        ``pupsourcing projections status``)."""
        return f"relay_{self.name}"

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Relay until ``stop`` is set (checked between batches)."""
        stop = stop or asyncio.Event()
        projection = self._projection

        async def work(halt: asyncio.Event) -> None:
            await self._retrying(lambda: self._processor.run(projection, stop=halt), halt)

        await self._leading(work, stop)

    async def catch_up(self) -> int:
        """Relay until no committed event is left; return how many events
        were published, counted from the last (re)connect when a failure
        was retried."""
        projection = self._projection

        async def work(halt: asyncio.Event) -> int | None:
            return await _unless(
                halt, self._retrying(lambda: self._processor.catch_up(projection), None)
            )

        result = await self._leading(work, None)
        return result or 0

    async def close(self) -> None:
        """Close the NATS connection, and the database connections if the
        relay opened them."""
        await self._link.close()
        await self._processor.close()
        if self._lease is not None:
            await self._lease.close()

    async def __aenter__(self) -> NatsRelay:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one copy at a time -----------------------------------------------------

    async def _leading(
        self, work: Callable[[asyncio.Event], Awaitable[T]], stop: asyncio.Event | None
    ) -> T | None:
        """Run ``work`` while this copy holds the relay's lease (see
        :mod:`pupsourcing.relay._lease`), waiting as standby while another
        copy does; ``work`` is to stop when the event it is given is set
        (``stop`` was, or the lease was lost: then wait again). Without a
        lease (``db`` a connection), ``work`` runs at once. ``None`` when
        stopped while waiting."""
        lease = self._lease
        if lease is None:
            return await work(stop or asyncio.Event())
        while True:
            try:
                taken = await self._take_lease(lease, stop)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Cancelled as it took the lease: its commit may have
                    # gone through, and another copy would wait a TTL.
                    await lease.release()
                raise
            if not taken:
                return None
            halt, lost = asyncio.Event(), asyncio.Event()
            keeper = asyncio.ensure_future(self._keep_lease(lease, stop, halt, lost))
            try:
                result = await work(halt)
            except BaseException:
                await _cancelled(keeper)
                if not lost.is_set():
                    await lease.release()
                raise
            await _cancelled(keeper)
            if not lost.is_set():
                await lease.release()
                return result
            self._synced = False  # the next holder published meanwhile
            if stop is not None and stop.is_set():
                return None

    async def _take_lease(self, lease: RelayLease, stop: asyncio.Event | None) -> bool:
        """Wait until this copy holds the lease; ``False`` when stopped first.
        A lost connection or a transient error is retried with back-off;
        any other (a refused login, a missing privilege) is raised."""
        standby = False
        delay = RECONNECT_INITIAL_DELAY
        dialect = self._processor.store.dialect
        while True:
            try:
                held = await lease.acquire()
                self._lease_works("lease statements work again")
                if held:
                    if standby or not lease.absent:
                        self.logger.info(
                            "relay %s: active (owner %s)", self.checkpoint_name, lease.owner
                        )
                    return True
                wait = lease.ttl * STANDBY_LOOK
                if not standby:
                    self.logger.info(
                        "relay %s: another copy is active; standing by (owner %s)",
                        self.checkpoint_name,
                        lease.owner,
                    )
                    standby = True
                delay = RECONNECT_INITIAL_DELAY
            except Exception as exc:
                if not (dialect.is_connection_error(exc) or dialect.is_transient(exc)):
                    raise
                first = f"lease: {type(exc).__name__}: {one_line(exc)}"
                self._failed(self._lease_outage, exc, first, delay, "lease still fails")
                wait, delay = delay, min(delay * 2, RECONNECT_MAX_DELAY)
            if await pause(wait, stop):
                return False

    async def _keep_lease(
        self,
        lease: RelayLease,
        stop: asyncio.Event | None,
        halt: asyncio.Event,
        lost: asyncio.Event,
    ) -> None:
        """Renew the lease every third of its TTL until ``stop`` is set, then
        set ``halt``; set ``lost`` and ``halt`` when another copy took it or
        it was not renewed for :data:`STOP_AFTER` of its TTL, the renewals
        failing or one still waiting (before it runs out: then none may be
        active for a while, never two)."""
        limit = lease.ttl * STOP_AFTER
        renewed = time.monotonic()
        failure = "a renewal still waits"
        renewal: asyncio.Future[bool] | None = None
        try:
            while not await pause(min(lease.ttl / 3, renewed + limit - time.monotonic()), stop):
                began = time.monotonic()
                renewal = asyncio.ensure_future(lease.renew())
                await asyncio.wait({renewal}, timeout=renewed + limit - began)
                if not renewal.done():
                    reason = f"the lease was not renewed for {limit:.1f} s ({failure})"
                elif (exc := renewal.exception()) is not None:
                    if not isinstance(exc, Exception):
                        raise exc
                    failure = one_line(exc)
                    if time.monotonic() - renewed < limit:
                        first = f"lease not renewed: {failure}"
                        self._failed(self._lease_outage, exc, first, None, "lease still fails")
                        continue
                    reason = f"the lease was not renewed for {limit:.1f} s ({failure})"
                elif renewal.result():
                    renewed, failure = began, "a renewal still waits"
                    self._lease_works("lease renewed again")
                    continue
                else:
                    reason = "another copy took the lease over"
                self.logger.warning(
                    "relay %s: %s; standing by after this batch", self.checkpoint_name, reason
                )
                lost.set()
                break
            halt.set()
        finally:
            if renewal is not None and not renewal.done():
                await _cancelled(renewal)  # (the lease's connection is dropped)

    def _lease_works(self, what: str) -> None:
        """A lease statement worked: ``what`` ends an outage, if any, at INFO."""
        lasted = self._lease_outage.ended()
        if lasted is not None:
            self.logger.info("relay %s: %s after %.1f s", self.checkpoint_name, what, lasted)

    # -- failures --------------------------------------------------------------

    async def _retrying(
        self, work: Callable[[], Awaitable[T]], stop: asyncio.Event | None
    ) -> T | None:
        """Run ``work`` on an open, resumed link; after a NATS failure (or a
        database connection failure outside the processor) drop the link,
        wait, and start again. ``None`` when stopped while waiting."""
        delay = RECONNECT_INITIAL_DELAY
        while True:
            batches = self._link.batches
            try:
                await _nats(self._link.open())
                if not self._synced:
                    await self._resume()
                lasted = self._outage.ended()
                if lasted is not None:
                    self.logger.info(
                        "relay %s: publishing again after %.1f s", self.checkpoint_name, lasted
                    )
                return await work()
            except Exception as exc:
                self._synced = False
                if not self._retryable(exc):
                    # Run again, the relay starts as a new one would: it
                    # connects (reading the stream's limits again) and resumes
                    # from what the stream holds, which its failed batch may
                    # have reached (or passed, past a refused event).
                    await self._link.close()
                    raise
                if self._link.batches != batches:
                    delay = RECONNECT_INITIAL_DELAY  # it worked for a while
                first = f"{type(exc).__name__}: {one_line(exc)}"
                self._failed(self._outage, exc, first, delay)
                await self._link.close()
                if await pause(delay, stop):
                    return None
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            except BaseException:
                self._synced = False  # cancelled, maybe mid-batch: resume from the stream
                raise

    def _failed(
        self,
        outage: Outage,
        exc: Exception,
        first: str,
        retry_in: float | None,
        still: str = "still fails",
    ) -> None:
        """Log a failure that is retried: ``first`` (a WARNING) when
        ``outage`` starts, then "``still`` after K attempts" at DEBUG, with a
        WARNING every :data:`RECONNECT_WARNING` seconds (see :class:`Outage`)."""
        level = outage.failed()
        retrying = "retrying" if retry_in is None else f"retrying in {retry_in:.1f}s"
        if outage.failures == 1:
            self.logger.warning("relay %s: %s; %s", self.checkpoint_name, first, retrying)
            return
        self.logger.log(
            level,
            "relay %s: %s after %d attempts in %.0f s (%s: %s); %s",
            self.checkpoint_name,
            still,
            outage.failures,
            outage.lasted,
            type(exc).__name__,
            one_line(exc),
            retrying,
        )

    def _retryable(self, exc: Exception) -> bool:
        import nats.errors
        import nats.js.errors

        if isinstance(exc, nats.js.errors.APIError):
            return isinstance(exc, nats.js.errors.ServiceUnavailableError)
        if isinstance(exc, nats.errors.MaxPayloadError):
            return False
        if isinstance(exc, nats.errors.Error | ConnectionLost | OSError | TimeoutError):
            return True
        dialect = self._processor.store.dialect
        owned = self._processor._factory is not None
        return owned and (dialect.is_connection_error(exc) or dialect.is_transient(exc))

    async def _resume(self) -> None:
        """Move the checkpoint up to the last event the stream holds, when
        that is further and the stream holds every event in between: a relay
        killed after JetStream stored a batch but before its checkpoint
        committed then publishes none of it again, however long it stayed
        down, and one killed after JetStream refused an event of it (but
        stored later ones) does not skip that event. The move is a
        compare-and-set: should another copy of the relay (same name) move
        the checkpoint meanwhile, it is read again, never set back."""
        published = await _nats(self._link.last_position())
        processor, store, name = self._processor, self._processor.store, self.checkpoint_name
        dialect = store.dialect
        conn = await processor.connection()
        try:
            while True:
                checkpoint = await store._run(conn, dialect.load_checkpoint(name))
                await store._end_transaction(conn, commit=True)
                if published <= checkpoint:
                    break
                # Published by a relay that stopped before its checkpoint
                # moved: JetStream may have refused one of them.
                await _nats(
                    self._link.check_held(
                        checkpoint, lambda after, limit: store.read_events(conn, after, limit)
                    )
                )
                await store._end_transaction(conn, commit=True)
                moved = await store._run(
                    conn, dialect.advance_checkpoint(name, checkpoint, published)
                )
                await store._end_transaction(conn, commit=True)
                if moved:
                    self.logger.info(
                        "relay %s: the stream already holds events up to position %d; "
                        "checkpoint moved from %d",
                        name,
                        published,
                        checkpoint,
                    )
                    break
                self.logger.info(
                    "relay %s: checkpoint moved meanwhile (another copy running?); reading it "
                    "again",
                    name,
                )
        except BaseException:
            if processor._factory is not None:
                await processor.close()
            else:
                with contextlib.suppress(Exception):
                    await store._end_transaction(conn, commit=False)
            raise
        processor._core.subscription(self._projection).checkpoint = None  # reload it
        self._synced = True


async def _nats(call: Awaitable[T]) -> T:
    """``await call``, a call into nats-py, raising a cancellation of the task
    meanwhile that nats-py dropped: on Python 3.11 its requests'
    ``asyncio.wait_for`` returns a reply that arrived as the task was
    cancelled, and the cancellation is lost."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await call
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


async def _unless(halt: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or ``None`` when ``halt`` is set first (``work``
    is cancelled then)."""
    task = asyncio.ensure_future(work)
    halted = asyncio.ensure_future(halt.wait())
    try:
        await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halted.cancel()
        if not task.done():
            await _cancelled(task)
    return None if task.cancelled() else task.result()


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it ended, its failure ignored (a
    cancellation of the caller meanwhile is not)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: not reported as never retrieved
