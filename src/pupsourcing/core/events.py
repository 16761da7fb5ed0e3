"""Event value objects: what is appended, what is read back, and their groupings."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """A domain event before it is stored.

    ``payload`` is opaque bytes in whatever encoding the application chooses;
    ``metadata`` is JSON text as bytes (or ``None``). The store assigns the
    aggregate version and global position on append.
    """

    bounded_context: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    _: KW_ONLY
    event_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    metadata: bytes | None = b"{}"
    causation_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    created_at: datetime = field(default_factory=_utc_now)


@dataclass(frozen=True, slots=True)
class PersistedEvent(Event):
    """An event as stored: the fields of :class:`Event` plus the positions the
    store assigned (keyword arguments)."""

    _: KW_ONLY
    global_position: int
    aggregate_version: int


@dataclass(frozen=True, slots=True)
class Stream:
    """The events of one aggregate, in version order."""

    bounded_context: str
    aggregate_type: str
    aggregate_id: str
    events: tuple[PersistedEvent, ...] = ()

    @property
    def version(self) -> int:
        """The aggregate version after the last event; 0 when empty."""
        return self.events[-1].aggregate_version if self.events else 0

    @property
    def is_empty(self) -> bool:
        return not self.events

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[PersistedEvent]:
        return iter(self.events)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The events one append stored (never the whole history: see :class:`Stream`)."""

    events: tuple[PersistedEvent, ...] = ()
    global_positions: tuple[int, ...] = ()

    @property
    def from_version(self) -> int:
        """The aggregate version before the append; 0 if nothing was appended."""
        return self.events[0].aggregate_version - 1 if self.events else 0

    @property
    def to_version(self) -> int:
        """The aggregate version after the append; 0 if nothing was appended."""
        return self.events[-1].aggregate_version if self.events else 0


_new = object.__new__
_set = object.__setattr__


class _StoredEventBuilder(PersistedEvent):
    """Builds :class:`PersistedEvent` instances quickly.

    A subclass that adds no slots has the same memory layout, so an instance
    may become a ``PersistedEvent`` by assigning ``__class__``. Until then it
    is not frozen: plain attribute stores fill the slots, several times faster
    than going through the frozen dataclass's ``__setattr__`` (or
    ``object.__setattr__``), which matters when a projection catches up on
    millions of rows. Never seen outside :func:`stored_event`.
    """

    __slots__ = ()
    # Both: a class that overrides only one keeps the slow attribute path.
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__

    def __init__(
        self,
        global_position: int,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        aggregate_version: int,
        event_id: uuid.UUID,
        event_type: str,
        event_version: int,
        payload: bytes,
        trace_id: str | None,
        correlation_id: str | None,
        causation_id: str | None,
        metadata: bytes | None,
        created_at: datetime,
    ) -> None:
        self.global_position = global_position  # type: ignore[misc]
        self.bounded_context = bounded_context  # type: ignore[misc]
        self.aggregate_type = aggregate_type  # type: ignore[misc]
        self.aggregate_id = aggregate_id  # type: ignore[misc]
        self.aggregate_version = aggregate_version  # type: ignore[misc]
        self.event_id = event_id  # type: ignore[misc]
        self.event_type = event_type  # type: ignore[misc]
        self.event_version = event_version  # type: ignore[misc]
        self.payload = payload  # type: ignore[misc]
        self.trace_id = trace_id  # type: ignore[misc]
        self.correlation_id = correlation_id  # type: ignore[misc]
        self.causation_id = causation_id  # type: ignore[misc]
        self.metadata = metadata  # type: ignore[misc]
        self.created_at = created_at  # type: ignore[misc]
        self.__class__ = PersistedEvent  # type: ignore[assignment]


stored_event: Callable[
    [
        int,
        str,
        str,
        str,
        int,
        uuid.UUID,
        str,
        int,
        bytes,
        str | None,
        str | None,
        str | None,
        bytes | None,
        datetime,
    ],
    PersistedEvent,
] = _StoredEventBuilder
"""Build a :class:`PersistedEvent` from already-typed column values, in the
stores' column order (``global_position, bounded_context, aggregate_type,
aggregate_id, aggregate_version, event_id, event_type, event_version, payload,
trace_id, correlation_id, causation_id, metadata, created_at``). Equal to the
keyword constructor and about five times faster."""


_UNKNOWN_SAFETY = uuid.SafeUUID.unknown


def _uuid(value: int) -> uuid.UUID:
    result: uuid.UUID = _new(uuid.UUID)
    _set(result, "int", value)
    _set(result, "is_safe", _UNKNOWN_SAFETY)
    return result


def uuid_from_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)`` for the canonical 36-character form, several times
    faster (adapters decode event ids by the thousand)."""
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        return uuid.UUID(text)
    return _uuid(int(text.replace("-", ""), 16))


def uuid_from_bytes(value: bytes | bytearray) -> uuid.UUID:
    """``uuid.UUID(bytes=value)`` without its argument parsing."""
    if len(value) != 16:
        return uuid.UUID(bytes=bytes(value))
    return _uuid(int.from_bytes(value, "big"))
