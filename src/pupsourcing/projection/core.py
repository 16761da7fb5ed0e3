"""Everything a projection processor decides, without I/O, shared by the
blocking :class:`~pupsourcing.projection.Processor` and the asyncio
:class:`~pupsourcing.aio.AsyncProcessor`.

``run`` and ``catch_up`` are plans (see :mod:`pupsourcing.store.plan`): they
yield the statements and :class:`~pupsourcing.projection.batch.Handle`
instructions of each batch (:func:`~pupsourcing.projection.batch.step`) and
the processor's own instructions (:data:`CONNECT`, :data:`DISCONNECT`,
:class:`Pause`), including the retry of batches that a lock wait, deadlock
or busy database stopped, and the reconnect back-off. A processor only carries
them out, blocking or awaiting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from pupsourcing import _observe
from pupsourcing._outage import Outage
from pupsourcing._text import one_line
from pupsourcing.core.errors import PartitionLayoutError, ProjectionError
from pupsourcing.projection.batch import (
    Handle,
    Logger,
    OncePerStore,
    StepOutcome,
    Subscription,
    release,
    step,
)
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.failures import Failing, dead_letter_step, replay
from pupsourcing.projection.partition import HashPartitionStrategy
from pupsourcing.projection.protocols import AsyncProjection, Projection
from pupsourcing.store.base import StoreBase
from pupsourcing.store.dialect import Dialect
from pupsourcing.store.horizon import Horizon
from pupsourcing.store.plan import ROLLBACK, Statement

T = TypeVar("T")
ConnT = TypeVar("ConnT")
StoreT = TypeVar("StoreT", bound=StoreBase)

RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 10.0
HELD_BACK_WARNING = 30.0
"""Seconds a projection may wait behind open write transactions before the
processor logs a warning, and again every as many seconds while it waits."""
HELD_BACK_POLL = 0.1
"""How often an idle processor polls while committed events are held back by
open write transactions, during the first :data:`HELD_BACK_QUICK` seconds
(with a long ``poll_interval`` and push wake-up, a transaction that ends
without appending wakes nobody; most writers commit soon after they append)."""
HELD_BACK_QUICK = 1.0
"""Seconds of quick polls behind open write transactions."""
HELD_BACK_MAX = 1.0
"""The pause behind open write transactions after the quick polls (or
``poll_interval`` if shorter): a writer left open costs one poll a second,
not a polling loop, and a writer that rolls back holds the events behind it
up for no more than about this long."""
RECONNECT_WARNING = 60.0
"""Seconds between two warnings that a lost connection still cannot be opened
again (the attempts in between are logged at DEBUG)."""
CONFLICT_WARNING = 30.0
"""Seconds between two warnings that another processor moved a projection's
checkpoint (each says how many batches it cost since the last)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the processor's connection from its factory if it has none."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection the processor opened (never the caller's)."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds``, or less if the processor is asked to stop. Answered
    with whether it is (``Pause(0)`` only asks). With ``wake``, an idle
    wait that an append may cut short (push wake-up, see
    :mod:`pupsourcing.projection._waiter`)."""

    seconds: float
    wake: bool = False


_index_checks = OncePerStore()
"""The partition counts whose indexes a processor checked: processors
sharing a store warn once between them."""


CONNECT = Connect()
DISCONNECT = Disconnect()

Instruction = Statement | Handle | Connect | Disconnect | Pause
ProcessorPlan = Generator[Instruction, Any, T]


def split_db(db: object) -> tuple[Any, Callable[[], Any] | None]:
    """A processor's ``db`` argument as ``(connection, None)`` or ``(None,
    factory)``. A connection has ``cursor`` and ``commit``; anything else
    callable is a factory (sqlite3 connections are callable themselves)."""
    if hasattr(db, "cursor") and hasattr(db, "commit"):
        return db, None
    if not callable(db):
        raise TypeError("db must be a database connection or a callable returning one")
    return None, cast("Callable[[], Any]", db)


class ProcessorCore:
    """A processor's state and control flow: its subscriptions, the safe
    horizon, whether its connection is prepared, and the plans that run
    batches, wait when idle and reconnect with bounded exponential back-off
    (only when the processor opens its own connections: ``reconnects``)."""

    def __init__(self, dialect: Dialect, config: ProcessorConfig, *, reconnects: bool) -> None:
        self.dialect = dialect
        self.config = config
        self.logger = config.get_logger()
        self.reconnects = reconnects
        self.prepared = False
        """Whether ``dialect.prepare_processor()`` ran on the current connection."""
        self.transient_failures = 0
        """Batches in a row that a lock wait, deadlock or busy database stopped."""
        self.horizon = Horizon()
        self._subscriptions: dict[str, Subscription] = {}
        self._failing: dict[str, Failing] = {}
        """By checkpoint name: the event the projection's handler keeps failing on."""

    def subscription(self, projection: Projection | AsyncProjection) -> Subscription:
        """The projection's subscription, kept across calls so its checkpoint
        stays cached (renewed when its scope changed)."""
        fresh = Subscription.of(projection, self.config)
        known = self._subscriptions.get(fresh.checkpoint_name)
        if known is None or (known.aggregate_types, known.bounded_contexts) != (
            fresh.aggregate_types,
            fresh.bounded_contexts,
        ):
            self._subscriptions[fresh.checkpoint_name] = known = fresh
        return known

    def run(self, sub: Subscription) -> ProcessorPlan[None]:
        """Process batches until asked to stop, pausing ``poll_interval`` when idle."""
        return self._releasing(sub, self._run(sub))

    def _run(self, sub: Subscription) -> ProcessorPlan[None]:
        try:
            while not (yield Pause(0)):
                outcome = yield from self.attempt(sub)
                if outcome is not None:
                    self.watch_held_back(sub, outcome)
                    if outcome.contended:
                        yield from self.yield_to_other_processor(sub)
                    elif outcome.idle:
                        yield Pause(self.idle_pause(sub, outcome), wake=True)
        finally:
            observer = _observe.observer
            if observer is not None:
                observer.stopped(sub)

    def idle_pause(self, sub: Subscription, outcome: StepOutcome) -> float:
        """How long ``run`` waits for an append to wake it: ``poll_interval``,
        less while committed events wait behind open transactions (whose end
        notifies nothing unless they appended): :data:`HELD_BACK_POLL` for
        the first :data:`HELD_BACK_QUICK` seconds, then :data:`HELD_BACK_MAX`,
        never longer than ``poll_interval``."""
        interval = self.config.poll_interval
        if not outcome.waiting or sub.held_since is None:
            return interval
        quick = time.monotonic() - sub.held_since < HELD_BACK_QUICK
        return min(interval, HELD_BACK_POLL if quick else HELD_BACK_MAX)

    def catch_up(self, sub: Subscription) -> ProcessorPlan[int]:
        """Process until no committed event is left; return how many were
        handled. Waits for transactions holding earlier positions to finish
        rather than skip their events."""
        return self._releasing(sub, self._catch_up(sub))

    def _releasing(self, sub: Subscription, plan: ProcessorPlan[T]) -> ProcessorPlan[T]:
        """``plan``, then what its last batch kept set on the connection put
        back (see :func:`~pupsourcing.projection.batch.release`), also when
        it fails: the connection may be the caller's."""
        try:
            result = yield from plan
        except Exception:
            with contextlib.suppress(Exception):  # the plan's failure is raised next
                yield from release(self.dialect, sub)
            raise
        yield from release(self.dialect, sub)
        return result

    def _catch_up(self, sub: Subscription) -> ProcessorPlan[int]:
        handled = 0
        while True:
            outcome = yield from self.attempt(sub)
            if outcome is None:
                continue
            self.watch_held_back(sub, outcome)
            handled += outcome.handled
            if outcome.contended:
                yield from self.yield_to_other_processor(sub)
            elif outcome.idle:
                if not outcome.waiting:
                    return handled
                yield Pause(max(self.config.poll_interval, 0.001))

    def watch_held_back(self, sub: Subscription, outcome: StepOutcome) -> None:
        """Warn when open write transactions have held committed events back
        from the projection for :data:`HELD_BACK_WARNING` seconds: the
        processor waits for them without a time-out (see the module
        :mod:`pupsourcing.store.horizon`), so a session left idle in a
        transaction would otherwise stall it silently."""
        if outcome.handled or not outcome.waiting:
            sub.held_since = None
            return
        now = time.monotonic()
        if sub.held_since is None:
            sub.held_since = sub.warned_at = now
        elif now - sub.warned_at >= HELD_BACK_WARNING:
            sub.warned_at = now
            self.logger.warning(
                "projection %s has waited %.0f s at checkpoint %s: committed events up to "
                "position %d wait behind write transactions that may still commit lower "
                "positions; a transaction left open after appending holds back every projection",
                sub.label,
                now - sub.held_since,
                sub.checkpoint,
                self.horizon.visible,
                extra=sub.log_fields(checkpoint=sub.checkpoint),
            )

    def yield_to_other_processor(self, sub: Subscription) -> ProcessorPlan[None]:
        """Another processor moved the checkpoint under this one's batch: let
        it work for a while (the wait doubles, up to ``RECONNECT_MAX_DELAY``,
        while the conflicts go on) instead of fetching the same events again
        at once, and warn once per :data:`CONFLICT_WARNING` seconds with how
        many batches it cost."""
        sub.conflicts += 1
        sub.unreported_conflicts += 1
        now = time.monotonic()
        if sub.conflict_warned_at is None or now - sub.conflict_warned_at >= CONFLICT_WARNING:
            since = (
                ""
                if sub.conflict_warned_at is None
                else f" in the last {now - sub.conflict_warned_at:.0f} s"
            )
            self.logger.warning(
                "projection %s: checkpoint %s was moved by another processor %d time%s%s "
                "(is the projection running twice?); each time the batch was rolled back "
                "and the checkpoint reloaded",
                sub.label,
                sub.checkpoint_name,
                sub.unreported_conflicts,
                "" if sub.unreported_conflicts == 1 else "s",
                since,
                extra=sub.log_fields(conflicts=sub.unreported_conflicts),
            )
            sub.conflict_warned_at = now
            sub.unreported_conflicts = 0
        yield Pause(min(RECONNECT_INITIAL_DELAY * 2 ** (sub.conflicts - 1), RECONNECT_MAX_DELAY))

    def attempt(self, sub: Subscription) -> ProcessorPlan[StepOutcome | None]:
        """One batch; ``None`` when it did not run (a transient failure, or the
        connection was lost and re-opened)."""
        try:
            yield CONNECT
            if not self.prepared:
                yield from self.dialect.prepare_processor()
                yield from self.check_partition_indexes()
                if self.config.on_failure == "dead_letter":
                    # Its table must be there before a handler fails, not then.
                    yield from self.dialect.probe_dead_letters()
                self.prepared = True
            failing = self._failing.get(sub.checkpoint_name)
            if failing is not None and failing.due:
                limit = self.config.max_attempts
                plan = dead_letter_step(self.dialect, sub, failing, limit, self.logger)
            else:
                plan = step(self.dialect, self.horizon, sub, self.logger)
            observer = _observe.current()
            if observer is not None:
                plan = observer.batch(self.dialect, sub, self.horizon, plan)
            outcome = yield from plan
        except PartitionLayoutError:
            raise  # no handler ran: nothing to retry or set aside
        except ProjectionError as failure:
            yield from self.handler_failed(sub, failure)
            return None
        except Exception as exc:
            sub.checkpoint = None  # the last commit may or may not have happened
            if self.dialect.is_transient(exc):
                yield from self.back_off(exc, sub)
                return None
            if not self.reconnects or not self.dialect.is_connection_error(exc):
                raise
            sub.kept, sub.began_next = None, False  # of the connection closed now
            yield from self.reconnect(exc, sub)
            return None
        self.transient_failures = 0
        if not outcome.contended:
            sub.conflicts = 0
            self._failing.pop(sub.checkpoint_name, None)
        yield from self.give_turn(sub)
        return outcome

    def give_turn(self, sub: Subscription) -> ProcessorPlan[None]:
        """Leave the write lock free for a while once the batches have held
        it long enough, where the database's writers do not queue for it
        (see :attr:`~pupsourcing.store.dialect.Dialect.write_lock_turn`)."""
        turn = self.dialect.write_lock_turn
        if turn is not None and sub.lock_held >= turn[0]:
            sub.lock_held = 0.0
            yield Pause(turn[1])

    def check_partition_indexes(self) -> ProcessorPlan[None]:
        """Once per store and partition count, at the first connection: warn
        when the partition indexes a partitioned processor's reads need are
        missing (one catalog query), with the statements that create them."""
        total = self.config.total_partitions
        if (
            total < 2
            or type(self.config.partition_strategy) is not HashPartitionStrategy
            or not _index_checks.first(self.dialect, total)
        ):
            return
        missing = yield from self.dialect.missing_partition_indexes(total)
        if missing:
            # The store is live: statements that let appends go on meanwhile.
            online = self.dialect.builds_indexes_online
            self.logger.warning(
                "total_partitions=%d: the events table %s lacks %d of its %d partition "
                "indexes (%s), so each partitioned processor reads past every other "
                "partition's rows. Create them once (`pupsourcing projections run` does "
                "with `--create-indexes` and `--partitions %d`, or `--total-partitions %d "
                "--claim`), or run%s:\n%s",
                total,
                self.dialect.config.events_table,
                len(missing),
                total,
                ", ".join(missing),
                total,
                total,
                " (each statement on its own, outside a transaction)" if online else "",
                self.dialect.render_partition_indexes(self.dialect.config, total, online=online),
            )

    def handler_failed(self, sub: Subscription, failure: ProjectionError) -> ProcessorPlan[None]:
        """The batch's handler raised (the batch is rolled back): wait and try
        again until ``max_attempts`` attempts failed on the same event, then
        raise ``failure`` (``on_failure="stop"``) or have the next attempt
        record the event as a dead letter."""
        error = failure.__cause__ or failure
        failing = self._failing.get(sub.checkpoint_name)
        if failing is None or failing.position != failure.global_position:
            failing = Failing(failure.global_position, error)
            self._failing[sub.checkpoint_name] = failing
        else:
            failing.attempts += 1
            failing.error = error
        limit = self.config.max_attempts
        # A line per attempt, with the attempt's number: a WARNING while the
        # batch is tried again, an ERROR with the traceback for the outcome
        # (the dead letter's own line, or stopping here).
        fields = sub.log_fields(
            global_position=failing.position,
            checkpoint=sub.checkpoint,
            attempt=failing.attempts,
            max_attempts=limit,
        )
        if failing.attempts < limit:
            delay = failing.retry_delay()
            next_step = f"retrying in {delay:.1f}s"
        elif self.config.on_failure == "dead_letter":
            failing.due = True
            next_step = "recording the event as a dead letter"
        else:
            del self._failing[sub.checkpoint_name]
            self.logger.error(
                "projection %s failed at global position %d; batch rolled back, checkpoint "
                "stays at %s (attempt %d of %d; stopping)",
                sub.label,
                failing.position,
                sub.checkpoint,
                failing.attempts,
                limit,
                exc_info=error,
                extra=fields,
            )
            raise failure
        self.logger.warning(
            "projection %s failed at global position %d; batch rolled back, checkpoint stays "
            "at %s (attempt %d of %d: %s: %s; %s)",
            sub.label,
            failing.position,
            sub.checkpoint,
            failing.attempts,
            limit,
            type(error).__name__,
            one_line(error),
            next_step,
            extra=fields,
        )
        if not failing.due:
            yield Pause(delay)

    def replay_dead_letters(self, sub: Subscription) -> ProcessorPlan[int]:
        """Hand the subscription's dead letters to the projection again (see
        :func:`~pupsourcing.projection.failures.replay`)."""
        yield CONNECT
        return (yield from replay(self.dialect, sub, self.logger))

    def back_off(self, cause: BaseException, sub: Subscription) -> ProcessorPlan[None]:
        """A lock wait, deadlock or busy database: roll back (and put back
        what the last batch kept set on the connection), wait, retry; the
        wait doubles (up to ``RECONNECT_MAX_DELAY``) while it keeps failing."""
        self.transient_failures += 1
        delay = min(
            RECONNECT_INITIAL_DELAY * 2 ** (self.transient_failures - 1), RECONNECT_MAX_DELAY
        )
        self.logger.warning(
            "projection %s: batch could not run (%s); retrying in %.1fs",
            sub.label,
            one_line(cause),
            delay,
            extra=sub.log_fields(),
        )
        try:
            yield ROLLBACK
            yield from release(self.dialect, sub)
        except Exception:  # the retry will tell whether the connection is still usable
            self.logger.debug("rollback after a transient failure failed", exc_info=True)
        yield Pause(delay)

    def reconnect(self, cause: BaseException, sub: Subscription) -> ProcessorPlan[None]:
        """Close, wait, open again (see :func:`reconnect`)."""
        yield from reconnect(
            self.dialect,
            self.logger,
            cause,
            f"projection {sub.label}: processor",
            sub.log_fields(),
        )


def reconnect(
    dialect: Dialect,
    logger: Logger,
    cause: BaseException,
    who: str,
    extra: dict[str, Any] | None = None,
) -> ProcessorPlan[None]:
    """``who`` lost its connection (``cause``): close, wait, open again; double
    the wait (up to ``RECONNECT_MAX_DELAY``) while the database stays
    unreachable. Returns early when a :class:`Pause` is answered with a stop;
    an error opening the connection that is not a lost connection (a
    refused password, say) is raised. The loss is an ERROR; attempts that
    fail again are DEBUG, with a WARNING every :data:`RECONNECT_WARNING`
    seconds while they go on; the reconnect is INFO. ``extra``: the log
    records' fields. Shared by the processors and ``events tail -f``."""
    delay = RECONNECT_INITIAL_DELAY
    outage = Outage(RECONNECT_WARNING)
    outage.failed()  # the loss, an ERROR:
    logger.error(
        "%s lost its connection (%s); reconnecting in %.1fs",
        who,
        one_line(cause),
        delay,
        extra=extra,
    )
    while True:
        yield DISCONNECT
        if (yield Pause(delay)):
            return
        try:
            yield CONNECT
        except Exception as exc:
            if not dialect.is_connection_error(exc):
                raise
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            level = outage.failed()
            attempts = outage.failures - 1  # the first was the loss
            logger.log(
                level,
                "%s still has no connection after %d attempt%s in %.0f s (%s); "
                "reconnecting in %.1fs",
                who,
                attempts,
                "" if attempts == 1 else "s",
                outage.lasted,
                one_line(exc),
                delay,
                extra=extra,
            )
            continue
        logger.info("%s reconnected after %.1f s", who, outage.ended(), extra=extra)
        return


class ProcessorBase(Generic[ConnT, StoreT]):
    """What the blocking and asyncio processors share apart from I/O: their
    arguments and their :class:`ProcessorCore`."""

    _store_type: ClassVar[type[StoreBase]]
    _store_kind: ClassVar[str]
    """What ``store`` must be, for the error message."""

    def __init__(
        self,
        db: object,
        store: StoreT,
        config: ProcessorConfig | None = None,
    ) -> None:
        if not isinstance(store, self._store_type):
            raise TypeError(f"store must be {self._store_kind}, got {type(store).__name__}")
        self.store = store
        self.config = config or ProcessorConfig()
        self._logger = self.config.get_logger()
        conn, self._factory = split_db(db)
        self._conn: ConnT | None = conn
        self._core = ProcessorCore(store.dialect, self.config, reconnects=self._factory is not None)

    def _release(self) -> Any:
        """Forget the connection if the processor opened it, and return it for
        closing; ``None`` when there is nothing of its own to close."""
        if self._factory is None or self._conn is None:
            return None
        conn, self._conn = self._conn, None
        self._core.prepared = False
        return conn

    @contextlib.contextmanager
    def _closing(self) -> Iterator[None]:
        """Closing a broken connection may fail; it is gone either way."""
        try:
            yield
        except Exception:
            self._logger.debug("closing the processor's connection failed", exc_info=True)
