"""The projection processor: one class for every database."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar, overload

from pupsourcing.core.errors import ProjectionError, StoredValueError
from pupsourcing.projection._waiter import Waiter
from pupsourcing.projection.batch import Handle, Subscription
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.core import (
    RECONNECT_INITIAL_DELAY,
    RECONNECT_MAX_DELAY,
    Connect,
    Disconnect,
    Instruction,
    Pause,
    ProcessorBase,
    ProcessorPlan,
)
from pupsourcing.projection.protocols import Projection
from pupsourcing.store.base import SQLStore
from pupsourcing.store.plan import Statement, drive

__all__ = ["RECONNECT_INITIAL_DELAY", "RECONNECT_MAX_DELAY", "Processor"]

ConnT = TypeVar("ConnT", bound=Any)
T = TypeVar("T")


class Processor(ProcessorBase[ConnT, "SQLStore[Any]"]):
    """Feeds a projection the store's events in global-position order.

    ``db`` is a DB-API connection the processor may use exclusively, or a
    zero-argument callable returning a new connection; then the processor
    opens its connection lazily, closes it on :meth:`close`, and reconnects
    with bounded exponential back-off when the connection is lost.

    Each batch runs in one transaction on that connection: the projection's
    ``handle(event, tx)`` writes through ``tx`` and the checkpoint advances in
    the same transaction, so read models in the same database are updated
    exactly once. A projection never skips a committed event, even when
    concurrent writers commit out of position order: it reads only up to the
    safe horizon (:mod:`pupsourcing.store.horizon`).

    Interrupting :meth:`run` or :meth:`catch_up` mid-batch (``KeyboardInterrupt``,
    ``SystemExit``) leaves the checkpoint where the last committed batch put
    it: the open transaction is rolled back (a connection the processor opened
    is closed instead).

    For asyncio, :class:`pupsourcing.aio.AsyncProcessor` does the same with
    the same plans (:mod:`pupsourcing.projection.core`).
    """

    _store_type = SQLStore
    _store_kind = (
        "a pupsourcing store (PostgresStore, MySQLStore, SQLiteStore; the asyncio "
        "stores go with pupsourcing.aio.AsyncProcessor)"
    )

    @overload
    def __init__(
        self,
        db: Callable[[], ConnT],
        store: SQLStore[Any],
        config: ProcessorConfig | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self, db: ConnT, store: SQLStore[Any], config: ProcessorConfig | None = None
    ) -> None: ...

    def __init__(
        self, db: Any, store: SQLStore[Any], config: ProcessorConfig | None = None
    ) -> None:
        super().__init__(db, store, config)
        self._waiter = Waiter(
            store.config.events_table,
            store._push_listener(),
            self._logger,
            poll_interval=self.config.poll_interval,
        )
        self._use = threading.Lock()
        self._user: int | None = None  # the thread running, catching up or replaying
        self._close_after_use = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def connection(self) -> ConnT:
        """The connection batches run on (opened from the factory if needed)."""
        if self._conn is None:
            assert self._factory is not None
            self._conn = self._factory()
        conn: ConnT = self._conn
        return conn

    def close(self) -> None:
        """Close the connection if the processor opened it; never the caller's."""
        # Called from another thread while the processor runs (the clean-up
        # after a second interrupt cut Runner.run's wait short), it closes the
        # connection when that run ends, not under the batch in progress.
        with self._use:
            if self._user not in (None, threading.get_ident()):
                self._close_after_use = True
                return
        conn = self._release()
        if conn is not None:
            with self._closing():
                conn.close()

    def __enter__(self) -> Processor[ConnT]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- processing ------------------------------------------------------------

    def run(self, projection: Projection, *, stop: threading.Event | None = None) -> None:
        """Process batches until ``stop`` is set, sleeping ``poll_interval`` when
        idle. Raises :class:`ProjectionError` when the handler fails (the
        failed batch is rolled back, the checkpoint stays before it). A lock
        time-out or deadlock, and with a connection factory a lost
        connection, is retried instead, whether it hits the processor's
        statements or the handler's writes through ``tx``."""
        stop = stop or threading.Event()
        sub = self._subscription(projection)
        with self._in_use():
            try:
                self._drive(projection, sub, self._core.run(sub), stop)
            finally:
                self._waiter.release(self._conn)

    def catch_up(self, projection: Projection) -> int:
        """Process until no committed event is left for the projection; return
        how many events were handed to ``handle``. Waits for transactions
        that hold earlier positions to finish rather than skip their events."""
        sub = self._subscription(projection)
        with self._in_use():
            return self._drive(projection, sub, self._core.catch_up(sub), None)

    def replay_dead_letters(self, projection: Projection) -> int:
        """Hand each event recorded as this processor's dead letter of
        ``projection`` (under its checkpoint name, with the partition suffix)
        to ``handle`` again, one transaction each, and delete the records that
        succeed; a record that fails again stays, its attempts counted.
        Returns how many succeeded."""
        sub = self._subscription(projection)
        with self._in_use():
            return self._drive(projection, sub, self._core.replay_dead_letters(sub), None)

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        """Mark the connection in use by this thread; a :meth:`close` from
        another thread meanwhile takes effect on the way out."""
        with self._use:
            self._user = threading.get_ident()
        try:
            yield
        finally:
            with self._use:
                self._user = None
                close, self._close_after_use = self._close_after_use, False
            if close:
                self.close()

    def _subscription(self, projection: Projection) -> Subscription:
        sub = self._core.subscription(projection)
        if inspect.iscoroutinefunction(projection.handle):
            raise TypeError(
                f"projection {sub.name!r} has an async handle(); run it with "
                "pupsourcing.aio.AsyncProcessor"
            )
        return sub

    def _drive(
        self,
        projection: Projection,
        sub: Subscription,
        plan: ProcessorPlan[T],
        stop: threading.Event | None,
    ) -> T:
        execute = self.store._execute
        handle = projection.handle

        def perform(instruction: Instruction) -> Any:
            if type(instruction) is Statement:
                return execute(self._conn, instruction)
            if type(instruction) is Handle:
                conn = self._conn
                # A row that fails to decode is no handler failure.
                for events in instruction.chunks():
                    for event in events:
                        try:
                            handle(event, conn)
                        except StoredValueError:
                            raise  # a field the handler read cannot be decoded: idem
                        except Exception as exc:
                            raise ProjectionError(projection.name, event.global_position) from exc
                return None
            if type(instruction) is Pause:
                if instruction.wake and stop is not None:
                    return self._waiter.wait(self._conn, instruction.seconds, stop, sub.label)
                if stop is not None:
                    return stop.wait(instruction.seconds) if instruction.seconds else stop.is_set()
                time.sleep(instruction.seconds)
                return False
            if type(instruction) is Connect:
                return self.connection
            if type(instruction) is Disconnect:
                return self.close()
            raise TypeError(f"unknown instruction {instruction!r}")

        try:
            return drive(plan, perform)
        except Exception:
            raise  # the plan has rolled back what it had to
        except BaseException:
            # KeyboardInterrupt, SystemExit or a thread's asynchronous exception
            # went past the plan: the batch's transaction may still be open, and
            # the next batch on this connection would commit its partial writes.
            sub.checkpoint = None  # a commit may have been cut short
            kept, sub.kept, sub.began_next = sub.kept, None, False
            self._abandon_transaction(kept)
            raise

    def _abandon_transaction(self, kept: object) -> None:
        """After an interruption: a connection the processor opened is closed
        (its driver may be midway through a reply), the caller's is rolled back
        and given back what the batches had set on it (``kept``)."""
        if self._conn is None:
            return
        if self._factory is not None:
            self.close()
            return
        with contextlib.suppress(Exception):
            self.store._end_transaction(self._conn, commit=False)
        if kept is not None:
            with contextlib.suppress(Exception):
                self.store._run(self._conn, self.store.dialect.release_batch(kept))
