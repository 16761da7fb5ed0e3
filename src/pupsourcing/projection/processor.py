"""The projection processor: one class for every database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from pupsourcing.core.errors import ProjectionError
from pupsourcing.projection.batch import Handle, StepOutcome, Subscription, step
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.protocols import Projection
from pupsourcing.store.base import SQLStore
from pupsourcing.store.horizon import Horizon
from pupsourcing.store.plan import Statement, drive

ConnT = TypeVar("ConnT", bound=Any)
T = TypeVar("T")

RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 10.0


class Processor(Generic[ConnT]):
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
    """

    def __init__(
        self,
        db: ConnT | Callable[[], ConnT],
        store: SQLStore[Any],
        config: ProcessorConfig | None = None,
    ) -> None:
        if not isinstance(store, SQLStore):
            raise TypeError(f"store must be a pupsourcing store, got {type(store).__name__}")
        self.store = store
        self.config = config or ProcessorConfig()
        self._logger = self.config.get_logger()
        # A connection has cursor() and commit(); anything else callable is a
        # factory (sqlite3 connections are callable themselves).
        is_connection = hasattr(db, "cursor") and hasattr(db, "commit")
        if not is_connection and not callable(db):
            raise TypeError("db must be a DB-API connection or a callable returning one")
        self._factory: Callable[[], ConnT] | None = (
            None if is_connection else cast("Callable[[], ConnT]", db)
        )
        self._conn: ConnT | None = cast(ConnT, db) if is_connection else None
        self._prepared = False
        self._horizon = Horizon()
        self._transient_failures = 0
        self._subscriptions: dict[str, Subscription] = {}

    # -- lifecycle -------------------------------------------------------------

    @property
    def connection(self) -> ConnT:
        """The connection batches run on (opened from the factory if needed)."""
        if self._conn is None:
            assert self._factory is not None
            self._conn = self._factory()
        return self._conn

    def close(self) -> None:
        """Close the connection if the processor opened it; never the caller's."""
        if self._factory is not None and self._conn is not None:
            conn, self._conn = self._conn, None
            self._prepared = False
            try:
                conn.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                self._logger.debug("closing the processor's connection failed", exc_info=True)

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
        while not stop.is_set():
            outcome = self._step(projection, sub, stop)
            if outcome is not None and outcome.idle:
                stop.wait(self.config.poll_interval)

    def catch_up(self, projection: Projection) -> int:
        """Process until no committed event is left for the projection; return
        how many events were handed to ``handle``. Waits for transactions
        that hold earlier positions to finish rather than skip their events."""
        sub = self._subscription(projection)
        handled = 0
        while True:
            outcome = self._step(projection, sub, None)
            if outcome is None:
                continue
            handled += outcome.handled
            if outcome.idle:
                if not outcome.waiting:
                    return handled
                time.sleep(max(self.config.poll_interval, 0.001))

    def _subscription(self, projection: Projection) -> Subscription:
        fresh = Subscription.of(projection, self.config)
        known = self._subscriptions.get(fresh.checkpoint_name)
        if known is None or (known.aggregate_types, known.bounded_contexts) != (
            fresh.aggregate_types,
            fresh.bounded_contexts,
        ):
            self._subscriptions[fresh.checkpoint_name] = known = fresh
        return known

    def _step(
        self, projection: Projection, sub: Subscription, stop: threading.Event | None
    ) -> StepOutcome | None:
        """One batch; ``None`` when it did not run (transient failure, or the
        connection was lost and re-opened)."""
        try:
            conn = self.connection
            if not self._prepared:
                self._drive(conn, projection, self.store.dialect.prepare_processor())
                self._prepared = True
            outcome = self._drive(
                conn, projection, step(self.store.dialect, self._horizon, sub, self._logger)
            )
        except ProjectionError:
            raise
        except Exception as exc:
            dialect = self.store.dialect
            sub.checkpoint = None  # the last commit may or may not have happened
            if dialect.is_transient(exc):
                self._back_off(exc, stop)
                return None
            if self._factory is None or not dialect.is_connection_error(exc):
                raise
            self._reconnect(exc, stop)
            return None
        self._transient_failures = 0
        return outcome

    def _back_off(self, cause: BaseException, stop: threading.Event | None) -> None:
        """A lock wait, deadlock or busy database: roll back, wait, retry."""
        self._transient_failures += 1
        delay = min(
            RECONNECT_INITIAL_DELAY * 2 ** (self._transient_failures - 1), RECONNECT_MAX_DELAY
        )
        self._logger.warning("projection batch could not run (%s); retrying in %.1fs", cause, delay)
        try:
            self.connection.rollback()
        except Exception:  # the retry will tell whether the connection is still usable
            self._logger.debug("rollback after a transient failure failed", exc_info=True)
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    def _reconnect(self, cause: BaseException, stop: threading.Event | None) -> None:
        delay = RECONNECT_INITIAL_DELAY
        error: BaseException = cause
        while True:
            self._logger.error(
                "projection processor lost its connection (%s); reconnecting in %.1fs",
                error,
                delay,
            )
            self.close()
            if stop is not None:
                if stop.wait(delay):
                    return
            else:
                time.sleep(delay)
            try:
                _ = self.connection
            except Exception as exc:
                if not self.store.dialect.is_connection_error(exc):
                    raise
                error = exc
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            self._logger.info("projection processor reconnected")
            return

    def _drive(
        self, conn: ConnT, projection: Projection, plan: Generator[Statement | Handle, Any, T]
    ) -> T:
        execute = self.store._execute
        handle = projection.handle

        def perform(instruction: Statement | Handle) -> Any:
            if isinstance(instruction, Handle):
                event = None
                try:
                    for event in instruction.events:
                        handle(event, conn)
                except Exception as exc:
                    assert event is not None
                    raise ProjectionError(projection.name, event.global_position) from exc
                return None
            return execute(conn, instruction)

        return drive(plan, perform)
