"""One projection batch as a sans-I/O plan, shared by every database and by the
blocking and asyncio processors.

A step reads events up to the safe horizon (see
:mod:`pupsourcing.store.horizon`), hands them to the projection (the
:class:`Handle` instruction: the driver calls ``handle`` or awaits it), and
advances the checkpoint in the same transaction with a compare-and-set, so
read-model writes made through ``tx`` are applied exactly once even if two
processors run the same projection by mistake.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pupsourcing._text import plural
from pupsourcing.core._fast import frozen_constructor
from pupsourcing.core.errors import ProjectionError
from pupsourcing.core.events import PersistedEvent
from pupsourcing.projection.config import ProcessorConfig
from pupsourcing.projection.partition import HashPartitionStrategy
from pupsourcing.projection.protocols import PartitionStrategy
from pupsourcing.store.dialect import Dialect
from pupsourcing.store.horizon import Horizon
from pupsourcing.store.layout import check_layout
from pupsourcing.store.plan import COMMIT, COMMIT_AND_BEGIN, ROLLBACK, Plan, Row, Statement

DECODE_CHUNK = 64
"""Rows decoded into events at a time while a batch is handled."""


@frozen_constructor  # one per batch
@dataclass(frozen=True, slots=True)
class Handle:
    """Instruction to the driver: call the projection's ``handle`` for each
    event with the processor's connection. On failure the driver throws a
    :class:`ProjectionError` (original exception chained) into the plan.

    Iterating decodes the fetched rows a few at a time, so a batch's events
    die young: a thousand events alive at once would outlive the garbage
    collector's young generation and make every process pay for full
    collections of its heap."""

    rows: Sequence[Row]
    decode: Callable[[Sequence[Row]], list[PersistedEvent]]
    checkpoint: int | None = None
    """The checkpoint the batch moves to when it commits (``None``: it moves
    none, as a dead letter's replay)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PersistedEvent]:
        for events in self.chunks():
            yield from events

    def chunks(self) -> Iterator[list[PersistedEvent]]:
        """The events, a few at a time (the processors' loop: one generator
        step per chunk rather than per event)."""
        rows, decode = self.rows, self.decode
        for start in range(0, len(rows), DECODE_CHUNK):
            yield decode(rows[start : start + DECODE_CHUNK])


CHAIN_SECONDS = 1.0
"""How long batches may go on opening their successor's transaction with
their COMMIT (:data:`~pupsourcing.store.plan.COMMIT_AND_BEGIN`) before one
commits alone: PostgreSQL hands a listening session its notifications only
while it is idle outside a transaction, and its notification queue, shared
by the whole server, cannot be cleaned past a listener that has not read
them (it fills up, then appends fail)."""

MAX_SPAN = 1_000_000
"""The widest window of positions one filtered read scans."""

StepPlan = Generator[Statement | Handle, Any, "StepOutcome"]
Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]


@frozen_constructor  # one per batch
@dataclass(frozen=True, slots=True)
class StepOutcome:
    handled: int
    """Events handed to the projection."""
    idle: bool
    """Nothing to read below the safe horizon right now."""
    waiting: bool = False
    """Committed events exist beyond the horizon, held back by transactions
    that may still commit lower positions."""
    contended: bool = False
    """The checkpoint had moved away from the batch (another processor runs
    the same projection): the batch was rolled back."""


def _names(projection: object, attribute: str) -> tuple[str, ...]:
    value = getattr(projection, attribute, None)
    if not value:
        return ()
    if isinstance(value, str):
        raise TypeError(f"{attribute} must be a sequence of names, not a single str")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{attribute} must contain non-empty str, got {name!r}")
    return names


def projection_name(projection: object) -> str:
    name = getattr(projection, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"a projection needs a non-empty str name, got {name!r}")
    if not callable(getattr(projection, "handle", None)):
        raise TypeError(f"projection {name!r} has no handle(event, tx) method")
    return name


@frozen_constructor  # one per batch
@dataclass(frozen=True, slots=True)
class ReadAhead:
    """The next batch's rows, read in the transaction that committed the
    checkpoint they follow (see :meth:`Dialect.advance_and_read`)."""

    after: int
    """The checkpoint the rows follow."""
    high: int | None
    """The window's upper bound in SQL (a filtered read), ``None`` for none."""
    upto: int
    """The safe horizon the read was made under: rows past it are not final."""
    rows: Sequence[Row]


def partition_label(name: str, partition_key: int, total_partitions: int) -> str:
    """How log lines name a projection's partition: ``orders``, or
    ``orders (partition 1 of 4)``."""
    if total_partitions <= 1:
        return name
    return f"{name} (partition {partition_key} of {total_partitions})"


def partition_fields(
    name: str, checkpoint_name: str, partition_key: int, total_partitions: int, **more: object
) -> dict[str, object]:
    """The ``extra`` of a log record about a projection's partition."""
    fields: dict[str, object] = {"projection": name, "checkpoint_name": checkpoint_name}
    if total_partitions > 1:
        fields["partition"] = partition_key
        fields["total_partitions"] = total_partitions
    fields.update(more)
    return fields


@dataclass(slots=True)
class Subscription:
    """A projection resolved against a processor config: what to read, where
    its checkpoint is, and how far it got."""

    name: str
    checkpoint_name: str
    aggregate_types: tuple[str, ...]
    bounded_contexts: tuple[str, ...]
    partition_key: int
    total_partitions: int
    strategy: PartitionStrategy
    batch_size: int
    checkpoint: int | None = None
    """Last handled position, ``None`` until loaded from the database."""
    span: int = 0
    """Positions a filtered read covers at once; grows while reads come back
    sparse (see ``_fit``)."""
    in_sql: bool = field(init=False)
    """Whether the partition filter runs in SQL (the hash strategy)."""
    held_since: float | None = None
    """When open write transactions began holding committed events back
    from this projection (``time.monotonic()``); ``None`` while it is not held."""
    warned_at: float = 0.0
    """When the processor last warned that it is held back."""
    conflicts: int = 0
    """Batches in a row rolled back because the checkpoint had moved away."""
    unreported_conflicts: int = 0
    """Such batches since the processor last warned about them."""
    conflict_warned_at: float | None = None
    """When it last did (``time.monotonic()``)."""
    layout_checked: bool = False
    """Whether the partition layout guard passed (see :mod:`pupsourcing.store.layout`)."""
    layout: tuple[str, int] | None = None
    """Once it passed on a store with a layouts table: the projection's name
    and the partition count each batch's compare-and-set requires the table
    to record, so that a batch never commits under another layout (see
    :func:`_check_layout_again`)."""
    ahead: ReadAhead | None = None
    """The next batch, read ahead by the last one; used only from the
    checkpoint it follows."""
    lazy_commit: bool = False
    """Whether the last batch wrote nothing but its checkpoint (see
    :meth:`Dialect.begin_batch <pupsourcing.store.dialect.Dialect.begin_batch>`)."""
    defers: bool = True
    """Whether a lazy batch may take the write lock at its first write where
    the database can (see :func:`_lost_write_lock`); cleared for good once
    one could not."""
    kept: object = None
    """What the last batch left set on the connection for the next one
    (see :meth:`Dialect.end_batch <pupsourcing.store.dialect.Dialect.end_batch>`);
    :func:`release` puts it back."""
    began_next: bool = False
    """Whether the last batch's COMMIT may have opened the next batch's
    transaction (:data:`~pupsourcing.store.plan.COMMIT_AND_BEGIN`), still
    empty: :func:`release` rolls it back when no batch follows."""
    chain_started: float = 0.0
    """When (``time.monotonic()``) the batches began opening their
    successors' transactions, for :data:`CHAIN_SECONDS`."""
    lock_held: float = 0.0
    """Seconds its batches held the write lock since other writers last had
    a turn, where the dialect has a
    :attr:`~pupsourcing.store.dialect.Dialect.write_lock_turn`."""
    lock_freed: float = 0.0
    """When (``time.monotonic()``) its last batch let go of the write lock."""

    def __post_init__(self) -> None:
        self.in_sql = type(self.strategy) is HashPartitionStrategy
        self.span = self.span or 2 * self.batch_size * self.total_partitions

    @classmethod
    def of(cls, projection: object, config: ProcessorConfig) -> Subscription:
        name = projection_name(projection)
        return cls(
            name=name,
            checkpoint_name=config.checkpoint_name(name),
            aggregate_types=_names(projection, "aggregate_types"),
            bounded_contexts=_names(projection, "bounded_contexts"),
            partition_key=config.partition_key,
            total_partitions=config.total_partitions,
            strategy=config.partition_strategy,
            batch_size=config.batch_size,
        )

    @property
    def label(self) -> str:
        """How log lines name it: ``orders``, or ``orders (partition 1 of 4)``."""
        return partition_label(self.name, self.partition_key, self.total_partitions)

    def log_fields(self, **more: object) -> dict[str, object]:
        """The ``extra`` of its log records: which projection and partition."""
        return partition_fields(
            self.name, self.checkpoint_name, self.partition_key, self.total_partitions, **more
        )

    def select(self, rows: Sequence[Row]) -> Sequence[Row]:
        """The fetched rows of this partition's events. Rows of a partitioned
        read end with ``partition_hash`` (see :meth:`decoder`)."""
        if self.total_partitions <= 1:
            return rows
        key, total, strategy = self.partition_key, self.total_partitions, self.strategy
        # Column 3 is aggregate_id. With the hash strategy, SQL already kept
        # only this partition's hashed rows; rows the Go library wrote have
        # no hash and are decided here.
        in_sql = self.in_sql
        return [
            row
            for row in rows
            if (in_sql and row[-1] is not None) or strategy.should_process(row[3], key, total)
        ]

    def decoder(self, dialect: Dialect) -> Callable[[Sequence[Row]], list[PersistedEvent]]:
        """How :meth:`select`'s rows become events."""
        if self.total_partitions <= 1:
            return dialect.decode_events
        return dialect.decode_hashed_events


def _at_or_below(rows: Sequence[Row], position: int) -> Sequence[Row]:
    """The leading rows (ascending by position) at or below ``position``."""
    if not rows or int(rows[-1][0]) <= position:
        return rows
    end = 0
    while end < len(rows) and int(rows[end][0]) <= position:
        end += 1
    return rows[:end]


class OncePerStore:
    """Says yes once per store dialect and key, for all processors of the
    process: a warning they would each give, given once between them."""

    def __init__(self) -> None:
        self._seen: weakref.WeakKeyDictionary[Dialect, set[object]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def first(self, dialect: Dialect, key: object) -> bool:
        """Whether ``key`` is new for ``dialect`` (it is not any more)."""
        with self._lock:
            seen = self._seen.setdefault(dialect, set())
            if key in seen:
                return False
            seen.add(key)
            return True


_unguarded = OncePerStore()
"""The projections warned about running without a layout guard."""


def step(
    dialect: Dialect,
    horizon: Horizon,
    sub: Subscription,
    logger: Logger,
) -> StepPlan:
    """Handle at most one batch; see the module docstring. The first one
    checks the partition layout before anything else (raising
    :class:`~pupsourcing.PartitionLayoutError`)."""
    if not sub.layout_checked:
        guarded = yield from _check_layout(dialect, sub)
        if not guarded and _unguarded.first(dialect, sub.name):
            logger.warning(
                "projection %s: the store has no %s table, so its partition layout is not "
                "checked; run `pupsourcing migrate` (or store.create_schema) to add it",
                sub.name,
                dialect.config.layouts_table,
                extra=sub.log_fields(),
            )
        sub.layout_checked = True
    checkpoint = yield from _ensure_checkpoint(dialect, sub)
    ahead, sub.ahead = sub.ahead, None
    if ahead is None or ahead.after != checkpoint:
        upto = yield from _safe_upto(dialect, horizon, checkpoint)
        if upto is None:
            yield from release(dialect, sub)  # no batch follows at once
            return StepOutcome(0, idle=True, waiting=horizon.visible > checkpoint)
        statement, high = _next_read(dialect, sub, checkpoint, upto)
        ahead = ReadAhead(checkpoint, high, upto, (yield statement))
    fetched, within, position = _fit(sub, ahead)
    if not fetched and ahead.high is not None and sub.span >= MAX_SPAN and position < ahead.upto:
        # A filtered read found nothing in its widest window: past a jump
        # in positions (a restored sequence, say), go to the next event of
        # any kind at once rather than one window at a time. Positions up
        # to ``upto`` are final, so none can appear in between.
        following_event = yield from dialect.next_position(position)
        position = ahead.upto if following_event is None else min(following_event - 1, ahead.upto)
    events = Handle(sub.select(within), sub.decoder(dialect), position)
    # While the horizon is past the batch, the next batch is read in this
    # batch's transaction where the database can do it in the same round
    # trip as the checkpoint's compare-and-set.
    upto = horizon.safe
    following = (
        _next_read(dialect, sub, position, upto)
        if upto > position and dialect.reads_with_advance
        else None
    )
    advanced, read_ahead = yield from _handle_and_advance(
        dialect,
        sub,
        events,
        checkpoint,
        position,
        logger,
        following=None if following is None else following[0],
    )
    if not advanced:
        sub.checkpoint = None  # reloaded by the next step
        return StepOutcome(0, idle=False, contended=True)
    if following is not None and read_ahead is not None:
        sub.ahead = ReadAhead(position, following[1], upto, read_ahead)
    return _record(sub, len(events), fetched, position, logger)


def _check_layout(dialect: Dialect, sub: Subscription) -> Generator[Statement, Any, bool]:
    """:func:`~pupsourcing.store.layout.check_layout` for ``sub``, keeping
    what its batches' compare-and-set requires."""
    total = max(sub.total_partitions, 1)
    guarded = yield from check_layout(dialect, sub.name, total)
    sub.layout = (sub.name, total) if guarded else None
    return guarded


def _check_layout_again(dialect: Dialect, sub: Subscription) -> Generator[Statement, Any, None]:
    """A guarded batch's compare-and-set moved nothing (and it was rolled
    back): another processor moved the checkpoint, or the layout record
    changed under this one (``pupsourcing projections reset`` cleared it,
    and maybe processors with another partition count recorded theirs).
    Raises :class:`~pupsourcing.PartitionLayoutError` when another count is
    recorded now; records this count when none is (a reset with this
    processor running: it goes on from the reset checkpoint)."""
    if sub.layout is not None:
        yield from _check_layout(dialect, sub)


def release(dialect: Dialect, sub: Subscription) -> Generator[Statement, Any, None]:
    """Put back what the last batch kept set on the connection (see
    :attr:`Subscription.kept`): the processor is idle, stops or fails."""
    if sub.began_next:
        sub.began_next = False
        yield ROLLBACK
    kept, sub.kept = sub.kept, None
    if kept is not None:
        yield from dialect.release_batch(kept)


def _ensure_checkpoint(dialect: Dialect, sub: Subscription) -> Generator[Statement, Any, int]:
    """The subscription's checkpoint, loaded (and its row created) in a
    transaction of its own the first time and after a conflict or failure."""
    if sub.checkpoint is None:
        sub.checkpoint = yield from dialect.load_checkpoint(sub.checkpoint_name)
        yield COMMIT
    return sub.checkpoint


def _safe_upto(
    dialect: Dialect, horizon: Horizon, checkpoint: int
) -> Generator[Statement, Any, int | None]:
    """The position the batch may read up to: the safe horizon, probed again
    once the checkpoint has reached it; ``None`` while it is no higher than
    ``checkpoint`` (nothing to read yet)."""
    if horizon.safe <= checkpoint:
        probe = yield from dialect.horizon_probe()
        yield COMMIT  # the batch below must see everything the probe proved final
        horizon.observe(probe)
        if horizon.safe <= checkpoint:
            return None
    return horizon.safe


def _next_read(
    dialect: Dialect, sub: Subscription, checkpoint: int, upto: int
) -> tuple[Statement, int | None]:
    """The read of the batch after ``checkpoint`` under the safe horizon
    ``upto``, and the upper bound it has in SQL.

    A filtered read (scope or partitions) covers a window of positions: a
    bounded range keeps every query plan cheap (an open range with a
    selective filter and ORDER BY ... LIMIT tempts PostgreSQL into sorting
    everything after the checkpoint). An unfiltered one has no upper bound
    in SQL (the primary key walk is always the plan); :func:`_fit` drops its
    rows beyond ``upto``."""
    if sub.aggregate_types or sub.bounded_contexts or sub.total_partitions > 1:
        high = min(upto, checkpoint + sub.span)
        return _fetch_statement(dialect, sub, checkpoint, high), high
    return _fetch_statement(dialect, sub, checkpoint, None), None


def _fit(sub: Subscription, read: ReadAhead) -> tuple[int, Sequence[Row], int]:
    """Rows fetched, the rows of the batch and its end (the position the
    checkpoint moves to) of a read; a filtered read's window is fitted to
    how dense the scope is."""
    rows, checkpoint = read.rows, read.after
    if read.high is None:
        within = _at_or_below(rows, read.upto)
        full = len(within) == len(rows) == sub.batch_size
        return len(rows), within, int(rows[-1][0]) if full else read.upto
    full = len(rows) == sub.batch_size
    position = int(rows[-1][0]) if full else read.high
    # The database reads the whole window, so a window much wider than a
    # batch needs is wasted.
    if full:
        sub.span = max(sub.batch_size, (position - checkpoint) * 5 // 4)
    elif len(rows) < sub.batch_size // 2:
        sub.span = min(sub.span * 2, MAX_SPAN)
    return len(rows), rows, position


def _fetch_statement(
    dialect: Dialect, sub: Subscription, checkpoint: int, high: int | None
) -> Statement:
    """The read of the subscription's next batch after ``checkpoint``, up to ``high``."""
    partitioned = sub.total_partitions > 1
    return dialect.fetch_statement(
        checkpoint,
        high,
        sub.batch_size,
        sub.aggregate_types,
        sub.bounded_contexts,
        (sub.partition_key, sub.total_partitions) if partitioned and sub.in_sql else None,
        with_hash=partitioned,
    )


def _handle_and_advance(
    dialect: Dialect,
    sub: Subscription,
    events: Handle,
    checkpoint: int,
    position: int,
    logger: Logger,
    then: Callable[[], Plan[None]] | None = None,
    following: Statement | None = None,
) -> Generator[Statement | Handle, Any, tuple[bool, Sequence[Row] | None]]:
    """In one transaction, hand ``events`` to the projection and move the
    checkpoint from ``checkpoint`` to ``position`` (compare-and-set), then run
    ``then()``'s statements when it moved. Commits and answers ``True``; rolls
    back and answers ``False`` when the checkpoint had moved away, also when
    the handler failed after it had (see :func:`_after_failed_handler`).
    On any other failure rolls back and raises. Also answers the rows of
    ``following``, the read of the next batch, when the database read them
    with the compare-and-set (see
    :meth:`~pupsourcing.store.dialect.Dialect.advance_and_read`). A lazy
    batch that deferred taking the write lock and could not take it runs
    again (see :func:`_lost_write_lock`). A guarded batch (see
    :attr:`Subscription.layout`) that did not commit checks the partition
    layout again (see :func:`_check_layout_again`)."""
    advanced, ahead = yield from _run_batch(
        dialect, sub, events, checkpoint, position, logger, then, following
    )
    if not advanced:
        yield from _check_layout_again(dialect, sub)
    return advanced, ahead


def _run_batch(
    dialect: Dialect,
    sub: Subscription,
    events: Handle,
    checkpoint: int,
    position: int,
    logger: Logger,
    then: Callable[[], Plan[None]] | None,
    following: Statement | None,
) -> Generator[Statement | Handle, Any, tuple[bool, Sequence[Row] | None]]:
    """The body of :func:`_handle_and_advance`, short of checking the layout again."""
    chained, sub.began_next = sub.began_next, False  # the transaction is this batch's now
    while True:
        defer = sub.lazy_commit and sub.defers and dialect.defers_write_lock
        kept, sub.kept = sub.kept, None
        opened = yield from dialect.begin_batch(
            sub.lazy_commit, kept, defer=defer, handles=bool(events)
        )
        sub.kept = opened  # what is set on the connection now, should the driver stop
        taken = moving = time.monotonic()  # the write lock, unless deferred
        ahead = None
        try:
            if events:
                yield events
            if defer:
                moving = time.monotonic()  # the checkpoint's write takes it
            if following is None:
                advanced = yield from dialect.advance_checkpoint(
                    sub.checkpoint_name, checkpoint, position, sub.layout
                )
            else:
                advanced, ahead = yield from dialect.advance_and_read(
                    sub.checkpoint_name, checkpoint, position, following, sub.layout
                )
            if advanced and then is not None:
                yield from then()
            wrote = (yield from dialect.batch_wrote(opened)) if advanced else None
            break
        except ProjectionError as failure:
            yield ROLLBACK
            yield from _end_failed_batch(dialect, sub, opened)
            if defer and _lost_write_lock(dialect, sub, failure.__cause__, logger):
                continue
            if (yield from _after_failed_handler(dialect, sub, failure, checkpoint, logger)):
                return False, None
            # A read model written under another layout fails its handler too.
            yield from _check_layout_again(dialect, sub)
            raise
        except Exception as exc:
            yield ROLLBACK
            yield from _end_failed_batch(dialect, sub, opened)
            if defer and _lost_write_lock(dialect, sub, exc, logger):
                continue
            if (yield from _moved_meanwhile(dialect, sub, exc, checkpoint)):
                return False, None
            raise
    # The next batch hands the events read ahead over at once: its
    # transaction may open with this one's COMMIT (for a while, see
    # CHAIN_SECONDS), unless other writers must be given turns at the lock.
    chain = advanced and bool(ahead) and not dialect.write_lock_turn and _may_chain(sub, chained)
    try:
        yield from finish(commit=advanced, then_begin=chain)
    except Exception as exc:
        yield from _end_failed_batch(dialect, sub, opened)
        if advanced and (yield from _moved_meanwhile(dialect, sub, exc, checkpoint)):
            return False, None
        raise
    if dialect.write_lock_turn:
        # A deferred batch whose handler wrote took the lock at that write.
        _held_write_lock(dialect, sub, moving if defer and not wrote else taken)
    sub.began_next = chain
    sub.kept = yield from dialect.end_batch(opened, wrote)
    if wrote is not None:
        sub.lazy_commit = not wrote
    return advanced, ahead if advanced else None


def _may_chain(sub: Subscription, chained: bool) -> bool:
    """Whether a batch may open its successor's transaction; ``chained``:
    its own was opened by its predecessor's COMMIT (else a chain would
    start with it, and its start is noted)."""
    now = time.monotonic()
    if not chained:
        sub.chain_started = now
    return now - sub.chain_started < CHAIN_SECONDS


def _held_write_lock(dialect: Dialect, sub: Subscription, since: float) -> None:
    """Count the write lock as held by ``sub``'s batch from ``since`` until
    now (see :attr:`~pupsourcing.store.dialect.Dialect.write_lock_turn`):
    from zero if it was free for the turn's gap before, as every writer
    waiting for it has tried to take it then."""
    assert dialect.write_lock_turn is not None
    now = time.monotonic()
    if since - sub.lock_freed >= dialect.write_lock_turn[1]:
        sub.lock_held = 0.0
    sub.lock_held += now - since
    sub.lock_freed = now


def finish(*, commit: bool, then_begin: bool = False) -> Generator[Statement, Any, None]:
    """COMMIT (or ROLLBACK) the transaction, and with ``then_begin`` maybe
    open the next (:data:`~pupsourcing.store.plan.COMMIT_AND_BEGIN`);
    should that fail, roll back what it left open before raising, so the
    connection holds no locks."""
    try:
        yield (COMMIT_AND_BEGIN if then_begin else COMMIT) if commit else ROLLBACK
    except Exception:
        with contextlib.suppress(Exception):
            yield ROLLBACK
        raise


def database_failure(dialect: Dialect, exc: BaseException | None) -> BaseException | None:
    """The driver error that says the database failed, not the projection
    (a lost connection, a lock time-out, a deadlock, SQLite busy): ``exc``
    itself, or one in the chain it was raised from or while handling (a
    handler may wrap the error of its write in its own). ``None`` if none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if dialect.is_connection_error(exc) or dialect.is_transient(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _lost_write_lock(
    dialect: Dialect, sub: Subscription, exc: BaseException | None, logger: Logger
) -> bool:
    """Whether a batch that deferred taking the write lock failed for want of
    it (``exc`` is transient: the handler read through ``tx`` and another
    connection then held the lock or committed). It was rolled back; it runs
    again at once taking the lock at its start, as every later batch of
    ``sub`` will, so a handler that reads before it writes meets this once."""
    exc = database_failure(dialect, exc)
    if exc is None or not dialect.is_transient(exc):
        return False
    sub.defers = False
    logger.debug(
        "projection %s: a batch that deferred the write lock could not take it (%s); "
        "running it again with the lock taken first",
        sub.label,
        exc,
        extra=sub.log_fields(),
    )
    return True


def _moved_meanwhile(
    dialect: Dialect, sub: Subscription, exc: BaseException, checkpoint: int
) -> Generator[Statement, Any, bool]:
    """After the batch's own statements (its compare-and-set, its COMMIT)
    failed with ``exc`` and it was rolled back: whether ``exc`` is the
    checkpoint race, as READ COMMITTED answers it with a compare-and-set
    that moves nothing. Under REPEATABLE READ or SERIALIZABLE (and MariaDB's
    snapshot isolation) the update of a checkpoint row another processor
    changed since the batch's snapshot is a serialization failure instead:
    it is the race when the checkpoint has moved away from ``checkpoint``
    (the other processor handled the batch). Any other transient failure,
    or one with the checkpoint still there, is raised as before (a lost
    connection: without reading)."""
    if dialect.is_connection_error(exc) or not dialect.is_transient(exc):
        return False
    try:
        current = yield from dialect.get_checkpoint(sub.checkpoint_name)
        yield ROLLBACK  # end the read's transaction
    except Exception:
        with contextlib.suppress(Exception):
            yield ROLLBACK
        return False  # the batch's own failure is raised; the processor retries
    return current != checkpoint


def _end_failed_batch(
    dialect: Dialect, sub: Subscription, opened: object
) -> Generator[Statement, Any, None]:
    """:meth:`Dialect.end_batch` after a failure: the failure is what the
    caller raises, even if this fails too (on a lost connection, say)."""
    sub.kept = None
    with contextlib.suppress(Exception):  # the batch's own failure is raised next
        yield from dialect.end_batch(opened, None)


def _after_failed_handler(
    dialect: Dialect,
    sub: Subscription,
    failure: ProjectionError,
    checkpoint: int,
    logger: Logger,
) -> Generator[Statement, Any, bool]:
    """After the batch whose handler raised was rolled back: a database
    failure met by the handler's own writes is raised as the driver error.
    Answers ``True`` when the checkpoint has meanwhile moved away from
    ``checkpoint``: another
    processor handled the batch (two claiming workers overlap briefly while
    a lease changes hands), and the failure was most likely their writes
    clashing (a unique key of the read model), so the batch is dropped as
    contended. Otherwise answers ``False``: the caller raises ``failure``
    (the processor logs it, knowing whether it tries the batch again)."""
    cause = failure.__cause__
    failed = database_failure(dialect, cause)
    if failed is not None:
        # The handler's own write through ``tx`` met a lost connection, a
        # lock time-out or a deadlock: the database failed, not the
        # projection. The driver error goes to the processor, which
        # reconnects or retries as for its own statements.
        raise failed from None
    current = yield from dialect.get_checkpoint(sub.checkpoint_name)
    yield ROLLBACK  # end the read's transaction
    if current != checkpoint:
        logger.warning(
            "projection %s failed at global position %d while another processor moved its "
            "checkpoint from %d to %d; batch dropped, the other processor handled it (%s: %s)",
            sub.label,
            failure.global_position,
            checkpoint,
            current,
            type(cause).__name__,
            cause,
            extra=sub.log_fields(global_position=failure.global_position),
        )
        return True
    return False


def _record(
    sub: Subscription,
    handled: int,
    fetched: int,
    position: int,
    logger: Logger,
) -> StepOutcome:
    """Keep the committed checkpoint and log the batch."""
    sub.checkpoint = position
    if not handled:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "projection %s: checkpoint %d (no events in scope)",
                sub.label,
                position,
                extra=sub.log_fields(checkpoint=position, fetched=fetched),
            )
    elif logger.isEnabledFor(logging.INFO):  # (else no message to build)
        logger.info(
            "projection %s handled %s, checkpoint %d",
            sub.label,
            plural(handled, "event"),
            position,
            extra=sub.log_fields(handled=handled, checkpoint=position, fetched=fetched),
        )
    return StepOutcome(handled, idle=False)
