"""Event value objects: what is appended, what is read back, and their groupings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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
