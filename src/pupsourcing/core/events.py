"""Event value objects: what is appended, what is read back, and their groupings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

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


class _StoredEventBuilder(PersistedEvent):
    """An unfrozen twin of :class:`PersistedEvent`, for building instances fast.

    A subclass that adds no slots has the same memory layout, so an instance
    may become a ``PersistedEvent`` by assigning ``__class__``. Until then
    plain attribute stores fill the slots, several times faster than the
    frozen dataclass's ``__setattr__`` (or ``object.__setattr__``), which
    matters when a projection catches up on millions of rows. Never seen
    outside :func:`stored_event` and the decoders :func:`event_decoder` and
    :func:`event_row_decoder` compile.
    """

    __slots__ = ()
    # Both: a class that overrides only one keeps the slow attribute path.
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    # ``_Builder()`` then runs no Python code and passes no argument tuple
    # around: about twice as fast as ``object.__new__(_Builder)``.
    __init__ = object.__init__


STORED_FIELDS = (
    "global_position",
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
"""The fields of :class:`PersistedEvent` in the stores' column order."""

EventDecoder = Callable[..., list[PersistedEvent]]


def _compile(lines: list[str], name: str, names: Mapping[str, object] | None = None) -> Any:
    """Define the function ``name`` from source ``lines`` (as ``dataclasses``
    writes ``__init__``), with ``names`` as its globals."""
    namespace: dict[str, object] = {
        **(names or {}),
        "_Builder": _StoredEventBuilder,
        "_PersistedEvent": PersistedEvent,
    }
    exec(compile("\n".join(lines), f"<pupsourcing {name}>", "exec"), namespace)
    return namespace[name]


def _build(indent: str, convert: dict[str, str]) -> list[str]:
    """Source lines that leave a new ``event`` with every field set, each from
    the variable of its name or from its ``convert`` expression."""
    return [
        f"{indent}event = _Builder()",
        *(f"{indent}event.{f} = {convert.pop(f, f)}" for f in STORED_FIELDS),
        f"{indent}event.__class__ = _PersistedEvent",
    ]


def _check_layout(
    columns: Sequence[str], given: Sequence[str], convert: Mapping[str, str] | None
) -> None:
    fields = [c for c in columns if c != "_"]
    if not all(name.isidentifier() for name in [*columns, *given]):
        raise ValueError(f"columns and given must be field names: {[*columns, *given]}")
    if sorted([*fields, *given]) != sorted(STORED_FIELDS):
        raise ValueError(
            f"columns {list(columns)} and given {list(given)} must name every field of "
            f"PersistedEvent exactly once: {list(STORED_FIELDS)}"
        )
    unknown = set(convert or ()) - set(STORED_FIELDS)
    if unknown:
        raise ValueError(f"convert names no field of PersistedEvent: {sorted(unknown)}")


def event_decoder(
    columns: Sequence[str],
    *,
    given: Sequence[str] = (),
    convert: Mapping[str, str] | None = None,
    names: Mapping[str, object] | None = None,
) -> EventDecoder:
    """Compile ``decode(rows, *given) -> list[PersistedEvent]``.

    Rows hold the fields named by ``columns``, in that order; a column named
    ``_`` is skipped. The fields in ``given`` are the same for every row and
    passed after ``rows``. ``convert`` maps a field to the Python expression
    that computes it from its column (the column's name is the variable),
    with ``names`` as the expression's globals.

    The decoder fills the slots in one loop, with no call per row: about 30%
    faster than a constructor per row, and decoding is a good part of
    reading a stream or catching up.
    """
    _check_layout(columns, given, convert)
    lines = [
        f"def decode(rows, {''.join(f'{g}, ' for g in given)}):",
        "    decoded = []",
        "    keep = decoded.append",
        f"    for ({', '.join(columns)},) in rows:",
        *_build("        ", dict(convert or {})),
        "        keep(event)",
        "    return decoded",
    ]
    decode: EventDecoder = _compile(lines, "decode", names)
    return decode


def event_row_decoder(
    columns: Sequence[str],
    *,
    given: Sequence[str] = (),
    convert: Mapping[str, str] | None = None,
    names: Mapping[str, object] | None = None,
) -> Callable[..., Callable[[Sequence[Any]], PersistedEvent]]:
    """Compile ``row_decoder(*given) -> decode_row(row) -> PersistedEvent``,
    the one-row form of :func:`event_decoder` (same arguments), for a
    driver that calls it as it reads each row (a psycopg row factory): the
    raw row is then dropped at once instead of being kept with all the
    others until the whole result is decoded."""
    _check_layout(columns, given, convert)
    lines = [
        f"def row_decoder({', '.join(given)}):",
        "    def decode_row(row):",
        f"        ({', '.join(columns)},) = row",
        *_build("        ", dict(convert or {})),
        "        return event",
        "    return decode_row",
    ]
    row_decoder: Callable[..., Callable[[Sequence[Any]], PersistedEvent]]
    row_decoder = _compile(lines, "row_decoder", names)
    return row_decoder


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
] = _compile(
    [f"def stored_event({', '.join(STORED_FIELDS)}):", *_build("    ", {}), "    return event"],
    "stored_event",
)
"""Build a :class:`PersistedEvent` from already-typed column values, in the
stores' column order (:data:`STORED_FIELDS`). Equal to the keyword
constructor and several times faster; for many rows, :func:`event_decoder`
is faster still."""


_UNKNOWN_SAFETY = uuid.SafeUUID.unknown
_UUID = uuid.UUID


class _UUIDBuilder(uuid.UUID):
    """An unfrozen twin of :class:`uuid.UUID`, as :class:`_StoredEventBuilder`
    is of :class:`PersistedEvent`: allocated without running ``__init__`` and
    filled with plain attribute stores, then switched to ``uuid.UUID``. About
    twice as fast as ``object.__new__`` and two ``object.__setattr__`` calls."""

    __slots__ = ()
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__
    __init__ = object.__init__


def _uuid(value: int) -> uuid.UUID:
    result: Any = _UUIDBuilder()
    result.int = value
    result.is_safe = _UNKNOWN_SAFETY
    result.__class__ = _UUID
    built: uuid.UUID = result
    return built


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
