"""Event value objects: what is appended, what is read back, and their groupings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from pupsourcing.core.errors import InvalidEventError


def _utc_now() -> datetime:
    return datetime.now(UTC)


def payload_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a payload's type, or ``None``. Only
    ``bytes``: a ``bytearray`` or ``memoryview`` could change after the check."""
    return None if isinstance(value, bytes) else f"must be bytes, got {type(value).__name__}"


def metadata_problem(value: object) -> str | None:
    """What is wrong with ``value`` as metadata's type, or ``None``."""
    if value is None or isinstance(value, bytes):
        return None
    return f"must be bytes or None, got {type(value).__name__}"


def _json_bytes(name: str, value: object) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(None, name, f"is not JSON-serializable ({exc})") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            None, name, f"is not valid UTF-8 text ({exc.reason} at {exc.start})"
        ) from None


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

    def __post_init__(self) -> None:
        # Only the types here, so a dict or str fails where it is written;
        # append checks everything else (and these again: see validation).
        if not isinstance(self.payload, bytes):
            raise InvalidEventError(None, "payload", str(payload_problem(self.payload)))
        if self.metadata is not None and not isinstance(self.metadata, bytes):
            raise InvalidEventError(None, "metadata", str(metadata_problem(self.metadata)))

    @classmethod
    def json(
        cls,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        event_type: str,
        data: object,
        *,
        metadata: Mapping[str, object] | None = None,
        event_version: int = 1,
        event_id: uuid.UUID | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        created_at: datetime | None = None,
    ) -> Self:
        """An event whose payload is ``data`` as JSON, and whose metadata is
        ``metadata`` as JSON (``b"{}"`` when ``None``).

        The JSON is compact and deterministic (keys sorted, no spaces, UTF-8,
        no NaN or infinity): equal data gives equal bytes. A value ``json``
        cannot encode raises :class:`InvalidEventError` naming the field.
        """
        return cls(
            bounded_context,
            aggregate_type,
            aggregate_id,
            event_type,
            _json_bytes("payload", data),
            event_version=event_version,
            event_id=uuid.uuid4() if event_id is None else event_id,
            metadata=b"{}" if metadata is None else _json_bytes("metadata", metadata),
            causation_id=causation_id,
            correlation_id=correlation_id,
            trace_id=trace_id,
            created_at=_utc_now() if created_at is None else created_at,
        )


LATER = ("event_id", "metadata", "created_at")
"""The fields a store may leave to decode until they are first read."""


class _Later:
    """A field of :class:`PersistedEvent` that a store may keep in its stored
    form (slot ``_stored_<name>``) until it is first read: a data descriptor
    over the field's slot. Unlike ``__getattr__`` on the class, it leaves
    reading the other fields a plain slot read that the interpreter can
    specialise."""

    __slots__ = ("_name", "_slot")

    def __init__(self, name: str) -> None:
        self._name = name
        self._slot = vars(Event)[name]  # the slot's member descriptor

    def __get__(self, event: PersistedEvent | None, owner: type | None = None) -> Any:
        if event is None:
            return self
        try:
            return self._slot.__get__(event, owner)
        except AttributeError:
            pass
        try:
            decode = event._decode_later  # type: ignore[attr-defined]
        except AttributeError:
            raise AttributeError(
                f"{type(event).__name__!r} object has no attribute {self._name!r}"
            ) from None
        return decode(event, self._name)

    def __set__(self, event: PersistedEvent, value: object) -> None:
        self._slot.__set__(event, value)

    def __delete__(self, event: PersistedEvent) -> None:
        self._slot.__delete__(event)


@dataclass(frozen=True)
class PersistedEvent(Event):
    """An event as stored: the fields of :class:`Event` plus the positions the
    store assigned (keyword arguments)."""

    # The fields' slots, and room for the stored form of the fields in LATER
    # (see pupsourcing.core._fast): many projections never read them, and
    # decoding them costs more than the rest of the event together.
    __slots__ = (
        "_decode_later",
        "_stored_created_at",
        "_stored_event_id",
        "_stored_metadata",
        "aggregate_version",
        "global_position",
    )

    _: KW_ONLY
    global_position: int
    aggregate_version: int

    if not TYPE_CHECKING:  # (to a type checker, they are the fields they stand for)
        event_id = _Later("event_id")
        metadata = _Later("metadata")
        created_at = _Later("created_at")


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
