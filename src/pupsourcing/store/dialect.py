"""What every SQL adapter shares, and the few places where databases differ.

A :class:`Dialect` turns store operations into plans (see
:mod:`pupsourcing.store.plan`) for one database and one
:class:`~pupsourcing.store.config.StoreConfig`. The operations that read and
track checkpoints are written once here; a subclass supplies its quoting, DDL,
value conversions, error classification and its ``append``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import types
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from pupsourcing.core.errors import OptimisticConcurrencyError
from pupsourcing.core.events import AppendResult, Event, PersistedEvent, Stream
from pupsourcing.core.expected_version import ExpectedVersion
from pupsourcing.core.validation import check_append
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.plan import Plan, Row, Statement, run_statements
from pupsourcing.store.schema import SchemaDialect, schema_statements

EVENT_COLUMNS = (
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "event_id",
    "event_type",
    "event_version",
    "payload",
    "trace_id",
    "correlation_id",
    "causation_id",
    "metadata",
    "created_at",
)
"""The columns an append writes, in the order :meth:`Dialect.encode_event` fills them."""

MAX_PROJECTION_NAME_LENGTH = 255


def check_position(name: str, value: object) -> int:
    """A global position or version argument: a non-negative ``int``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def check_name(name: str, value: object, max_length: int | None = None) -> str:
    """A key argument such as a projection name or aggregate id."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters")
    return value


def build_result(
    events: Sequence[Event], versions: Sequence[int], positions: Sequence[int]
) -> AppendResult:
    """The :class:`AppendResult` for ``events`` stored at ``versions``/``positions``."""
    persisted = tuple(
        persisted_event(
            e.bounded_context,
            e.aggregate_type,
            e.aggregate_id,
            e.event_type,
            e.payload,
            e.event_version,
            e.event_id,
            e.metadata,
            e.causation_id,
            e.correlation_id,
            e.trace_id,
            e.created_at,
            position,
            version,
        )
        for e, version, position in zip(events, versions, positions, strict=True)
    )
    return AppendResult(persisted, tuple(positions))


def _slot_setters() -> tuple[Callable[[PersistedEvent, Any], None], ...] | None:
    """The slot setters of :class:`PersistedEvent`'s fields in :data:`PERSISTED_FIELDS`
    order, or ``None`` when the class is not the plain slotted dataclass that
    :func:`persisted_event` may fill in directly."""
    names = {f.name for f in dataclasses.fields(PersistedEvent)}
    if names != set(PERSISTED_FIELDS) or hasattr(PersistedEvent, "__post_init__"):
        return None
    setters = []
    for name in PERSISTED_FIELDS:
        slot = inspect.getattr_static(PersistedEvent, name, None)
        if not isinstance(slot, types.MemberDescriptorType):
            return None
        setters.append(slot.__set__)
    return tuple(setters)


PERSISTED_FIELDS = (
    "bounded_context",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "event_version",
    "event_id",
    "metadata",
    "causation_id",
    "correlation_id",
    "trace_id",
    "created_at",
    "global_position",
    "aggregate_version",
)
"""The argument order of :func:`persisted_event`."""

_SETTERS = _slot_setters()


def persisted_event(
    bounded_context: str,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: bytes,
    event_version: int,
    event_id: uuid.UUID,
    metadata: bytes | None,
    causation_id: str | None,
    correlation_id: str | None,
    trace_id: str | None,
    created_at: datetime,
    global_position: int,
    aggregate_version: int,
) -> PersistedEvent:
    """``PersistedEvent(...)`` from values already read from the database.

    Equal to calling the constructor, about three times cheaper: reads build
    thousands of events, and the frozen dataclass's ``__init__`` (keyword
    parsing, one ``object.__setattr__`` per field) dominated decoding. The
    fields are set through their slots, as ``__init__`` itself does; if
    :class:`PersistedEvent` ever gains a ``__post_init__`` or loses its slots,
    this falls back to the constructor.
    """
    return PersistedEvent(
        bounded_context,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        event_version=event_version,
        event_id=event_id,
        metadata=metadata,
        causation_id=causation_id,
        correlation_id=correlation_id,
        trace_id=trace_id,
        created_at=created_at,
        global_position=global_position,
        aggregate_version=aggregate_version,
    )


if _SETTERS is not None:
    _new = object.__new__
    (
        _set_bounded_context,
        _set_aggregate_type,
        _set_aggregate_id,
        _set_event_type,
        _set_payload,
        _set_event_version,
        _set_event_id,
        _set_metadata,
        _set_causation_id,
        _set_correlation_id,
        _set_trace_id,
        _set_created_at,
        _set_global_position,
        _set_aggregate_version,
    ) = _SETTERS

    def persisted_event(  # the fast variant of the definition above
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        event_type: str,
        payload: bytes,
        event_version: int,
        event_id: uuid.UUID,
        metadata: bytes | None,
        causation_id: str | None,
        correlation_id: str | None,
        trace_id: str | None,
        created_at: datetime,
        global_position: int,
        aggregate_version: int,
    ) -> PersistedEvent:
        event: PersistedEvent = _new(PersistedEvent)
        _set_bounded_context(event, bounded_context)
        _set_aggregate_type(event, aggregate_type)
        _set_aggregate_id(event, aggregate_id)
        _set_event_type(event, event_type)
        _set_payload(event, payload)
        _set_event_version(event, event_version)
        _set_event_id(event, event_id)
        _set_metadata(event, metadata)
        _set_causation_id(event, causation_id)
        _set_correlation_id(event, correlation_id)
        _set_trace_id(event, trace_id)
        _set_created_at(event, created_at)
        _set_global_position(event, global_position)
        _set_aggregate_version(event, aggregate_version)
        return event


class Dialect(abc.ABC):
    """SQL and value conversions of one database for one store configuration."""

    name: ClassVar[str]
    """Adapter name as used by ``migrate-gen --adapter``."""

    placeholder: ClassVar[str] = "%s"
    """The driver's parameter marker."""

    schema_dialect: ClassVar[SchemaDialect]
    """Column types and DDL syntax."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        self.events_table = self.quote(config.events_table)
        self.heads_table = self.quote(config.aggregate_heads_table)
        self.checkpoints_table = self.quote(config.checkpoints_table)
        p = self.placeholder
        select = f"SELECT {', '.join(self.select_columns())} FROM {self.events_table}"
        self.read_events_sql = (
            f"{select} WHERE global_position > {p} ORDER BY global_position LIMIT {p}"
        )
        self.read_stream_sql = (
            f"{select} WHERE bounded_context = {p} AND aggregate_type = {p} "
            f"AND aggregate_id = {p} AND aggregate_version >= {p} AND aggregate_version <= {p} "
            "ORDER BY aggregate_version"
        )
        self.head_version_sql = (
            f"SELECT aggregate_version FROM {self.heads_table} "
            f"WHERE bounded_context = {p} AND aggregate_type = {p} AND aggregate_id = {p}"
        )
        self.get_checkpoint_sql = (
            f"SELECT last_global_position FROM {self.checkpoints_table} WHERE projection_name = {p}"
        )

    # -- what each database provides ---------------------------------------

    @staticmethod
    @abc.abstractmethod
    def quote(identifier: str) -> str:
        """Quote an (already validated) identifier."""

    @abc.abstractmethod
    def append(self, expected: ExpectedVersion, events: Sequence[Event]) -> Plan[AppendResult]:
        """The plan for one append."""

    @abc.abstractmethod
    def decode_event(self, row: Row) -> PersistedEvent:
        """A row of :meth:`select_columns` as a :class:`PersistedEvent`."""

    def decode_events(self, rows: Sequence[Row]) -> list[PersistedEvent]:
        """Rows of :meth:`select_columns` as events, in order. Reads return
        thousands of rows; a dialect may decode them in one tighter loop."""
        decode = self.decode_event
        return [decode(row) for row in rows]

    @abc.abstractmethod
    def update_checkpoint_statement(self, projection_name: str, position: int) -> Statement:
        """An upsert of one checkpoint row."""

    @abc.abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the driver's unique-constraint violation."""

    def select_columns(self) -> list[str]:
        """The expressions that read an event row: position first, then
        :data:`EVENT_COLUMNS`."""
        return ["global_position", *EVENT_COLUMNS]

    def check_event(self, index: int, event: Event) -> None:  # noqa: B027 - optional hook
        """Limits this database adds to the core rules (lengths, sizes, ...)."""

    # -- shared by every database ------------------------------------------

    def check_append(self, events: Sequence[Event]) -> Sequence[Event]:
        """All input checks for an append; raises before anything is sent."""
        batch = check_append(events)
        for index, event in enumerate(batch):
            self.check_event(index, event)
        return batch

    @classmethod
    def schema(cls, config: StoreConfig) -> list[tuple[str, str]]:
        """The DDL as ``(comment, statement)`` pairs, each idempotent."""
        return schema_statements(config, cls.quote, cls.schema_dialect)

    @classmethod
    def render_schema(cls, config: StoreConfig) -> str:
        """The DDL as one SQL script (what ``migrate-gen`` writes)."""
        header = (
            f"-- pupsourcing event store schema for {cls.name}.\n"
            "-- Same tables, columns and indexes as the Go library pupsourcing, so Go and\n"
            "-- Python services can share one store"
            + (
                " (plus the nullable columns noted below).\n"
                if cls.schema_dialect.extra_event_columns
                else ".\n"
            )
        )
        body = "\n\n".join(f"-- {why}\n{sql};" for why, sql in cls.schema(config))
        return f"{header}\n{body}\n"

    def schema_sql(self) -> str:
        return self.render_schema(self.config)

    def create_schema(self) -> Plan[None]:
        return run_statements([Statement(sql) for _, sql in self.schema(self.config)])

    def conflict(
        self,
        events: Sequence[Event],
        expected: ExpectedVersion,
        actual: int | None = None,
        message: str | None = None,
    ) -> OptimisticConcurrencyError:
        first = events[0]
        return OptimisticConcurrencyError(
            message,
            bounded_context=first.bounded_context,
            aggregate_type=first.aggregate_type,
            aggregate_id=first.aggregate_id,
            expected=expected,
            actual=actual,
        )

    def conflict_reason(self, exc: BaseException) -> str | None:
        """Why a driver error raised during an append means a concurrency
        conflict, or ``None`` when it does not."""
        if self.is_unique_violation(exc):
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            return f"another append stored this version or event id first ({detail})"
        return None

    def as_conflict(
        self, exc: Exception, events: Sequence[Event], expected: ExpectedVersion
    ) -> Exception:
        """The exception to raise for ``exc`` caught during an append."""
        reason = self.conflict_reason(exc)
        if reason is None:
            return exc
        first = events[0]
        stream = f"{first.bounded_context}/{first.aggregate_type}/{first.aggregate_id}"
        return self.conflict(events, expected, message=f"conflict on {stream}: {reason}")

    def head_version(self, events: Sequence[Event]) -> Plan[int]:
        """The aggregate's current version (0 when it has no events)."""
        first = events[0]
        rows = yield Statement(
            self.head_version_sql,
            (first.bounded_context, first.aggregate_type, first.aggregate_id),
            fetch=True,
        )
        return int(rows[0][0]) if rows else 0

    def read_events(self, from_position: int, limit: int) -> Plan[list[PersistedEvent]]:
        check_position("from_position", from_position)
        check_position("limit", limit)
        if limit == 0:
            return []
        rows = yield Statement(self.read_events_sql, (from_position, limit), fetch=True)
        return self.decode_events(rows)

    def read_stream(
        self,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        from_version: int | None,
        to_version: int | None,
    ) -> Plan[Stream]:
        key = (
            check_name("bounded_context", bounded_context),
            check_name("aggregate_type", aggregate_type),
            check_name("aggregate_id", aggregate_id),
        )
        low = 1 if from_version is None else check_position("from_version", from_version)
        high = 2**63 - 1 if to_version is None else check_position("to_version", to_version)
        events: tuple[PersistedEvent, ...] = ()
        if low <= high:
            rows = yield Statement(self.read_stream_sql, (*key, low, high), fetch=True)
            events = tuple(self.decode_events(rows))
        return Stream(*key, events)

    def get_checkpoint(self, projection_name: str) -> Plan[int]:
        check_name("projection_name", projection_name, MAX_PROJECTION_NAME_LENGTH)
        rows = yield Statement(self.get_checkpoint_sql, (projection_name,), fetch=True)
        return int(rows[0][0]) if rows else 0

    def update_checkpoint(self, projection_name: str, position: int) -> Plan[None]:
        check_name("projection_name", projection_name, MAX_PROJECTION_NAME_LENGTH)
        check_position("position", position)
        yield self.update_checkpoint_statement(projection_name, position)
