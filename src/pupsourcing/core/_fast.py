"""Speed tricks, kept out of the value objects: compiled event decoders,
builders and encoders, and fast UUIDs.

The whole interface:

- :func:`event_decoder` and :func:`event_row_decoder` turn rows into
  :class:`~pupsourcing.core.events.PersistedEvent` objects, leaving the
  fields in :data:`~pupsourcing.core.events.LATER` to convert when first
  read (the event keeps them as read: once converted, both stay);
- :func:`event_builder` makes one from an appended :class:`Event` and the
  positions the store assigned;
- :func:`tuple_encoder` turns an :class:`Event` into a row of parameters;
- :func:`event_with_ids` copies an :class:`Event` with other correlation,
  causation and trace ids;
- :func:`uuid_from_text` and :func:`uuid_from_bytes` make event ids;
  :data:`UUID_FROM_TEXT` and :data:`TIMESTAMP_FROM_UTC_TEXT` are the inline
  forms of conversions a decoder runs per row;
- :func:`frozen_constructor` gives a frozen, slotted dataclass a faster
  constructor (the store engine's statements, a few per batch).

Each is equal to the plain Python it replaces (``PersistedEvent(**fields)``,
a tuple of attributes, ``uuid.UUID(...)``; the tests compare them), only
faster: a projection catching up decodes millions of rows. The functions
are compiled from source, as :mod:`dataclasses` writes ``__init__``, once
per row layout.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import CodeType
from typing import Any, TypeVar

from pupsourcing.core.errors import StoredValueError
from pupsourcing.core.events import LATER, Event, PersistedEvent

_T = TypeVar("_T")

FIELDS = tuple(f.name for f in dataclasses.fields(PersistedEvent))
_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Event))
"""Every field of :class:`PersistedEvent`; a decoder or builder sets each once."""

EventDecoder = Callable[..., list[PersistedEvent]]
Convert = str | Sequence[str]
"""How a decoder makes a field from its column (a variable of the field's
name): an expression, or statements that leave the field in that variable
(inlined in the loop, no call per row)."""


def _twin(cls: type[_T], name: str) -> type[_T]:
    """An unfrozen twin of the frozen, slotted class ``cls``, for building
    instances fast.

    A subclass that adds no slots has the same memory layout, so an instance
    may become a ``cls`` by assigning ``__class__``. Until then plain
    attribute stores fill the slots, several times faster than the frozen
    class's ``__setattr__`` (or ``object.__setattr__``). ``twin()`` runs no
    Python code and passes no argument tuple around: about twice as fast as
    ``object.__new__(twin)``. Never seen outside this module's functions.
    """
    namespace = {
        "__slots__": (),
        # Both: a class that overrides only one keeps the slow attribute path.
        "__setattr__": object.__setattr__,
        "__delattr__": object.__delattr__,
        "__new__": object.__new__,
        "__init__": object.__init__,
    }
    return type(name, (cls,), namespace)


_StoredEventBuilder = _twin(PersistedEvent, "_StoredEventBuilder")
# It stores the deferred fields straight into their slots, past
# PersistedEvent's descriptors for them.
for _name in LATER:
    setattr(_StoredEventBuilder, _name, vars(Event)[_name])
_EventBuilder = _twin(Event, "_EventBuilder")


@functools.lru_cache(maxsize=256)
def _code(source: str, name: str) -> CodeType:
    """``source`` compiled: a dialect's decoders share their source (the same
    ``decode_later`` five times, say), and compiling is what costs."""
    return compile(source, f"<pupsourcing {name}>", "exec")


def _compile(lines: list[str], name: str, names: Mapping[str, object] | None = None) -> Any:
    """Define the function ``name`` from source ``lines``, with ``names`` as
    its globals."""
    namespace: dict[str, object] = {
        **(names or {}),
        "_Builder": _StoredEventBuilder,
        "_PersistedEvent": PersistedEvent,
        "_UUIDBuilder": _UUIDBuilder,
        "_UUID": _UUID,
        "_UNKNOWN_SAFETY": _UNKNOWN_SAFETY,
        "_uuid_from_text": uuid_from_text,
        "_fromisoformat": datetime.fromisoformat,
        "_parse_timestamp": _parse_utc_text,
    }
    exec(_code("\n".join(lines), name), namespace)
    return namespace[name]


def _build(indent: str, convert: Mapping[str, Convert], later: Sequence[str] = ()) -> list[str]:
    """Source lines that leave a new ``event`` with every field set, each from
    the variable of its name or from its ``convert`` expression (statements
    run first); a field in ``later`` is kept as read, for ``_decode_later``
    (see :func:`_later_decoder`) to convert when it is first read."""
    prelude = [
        f"{indent}{line}"
        for f in FIELDS
        if f not in later and not isinstance(convert.get(f, f), str)
        for line in convert[f]
    ]
    expression = {f: c for f, c in convert.items() if isinstance(c, str)}
    return [
        *prelude,
        f"{indent}event = _Builder()",
        *(f"{indent}event.{f} = {expression.get(f, f)}" for f in FIELDS if f not in later),
        *(f"{indent}event._stored_{f} = {f}" for f in later),
        *([f"{indent}event._decode_later = _decode_later"] if later else []),
        f"{indent}event.__class__ = _PersistedEvent",
    ]


def _undecodable(event: PersistedEvent, name: str, exc: Exception) -> StoredValueError:
    stored = getattr(event, f"_stored_{name}", None)
    return StoredValueError(
        f"event at global position {event.global_position}: stored {name} {stored!r} "
        f"cannot be decoded: {exc}"
    )


def _later_decoder(
    later: Sequence[str], convert: Mapping[str, Convert], names: Mapping[str, object] | None
) -> Callable[[PersistedEvent, str], Any]:
    """Compile ``decode_later(event, name)``: the field ``name`` (one of
    ``later``) of ``event`` from its stored form, by its ``convert``, kept
    in its slot, so it is decoded once (two threads reading it first at once
    both decode it, to equal values). A value that cannot be converted
    raises :class:`StoredValueError`."""
    lines = ["def decode_later(event, name):", "    try:"]
    for f in later:
        how = convert.get(f, f)
        lines += [
            f"        if name == {f!r}:",
            f"            {f} = event._stored_{f}",
            *(
                [f"            {f} = {how}"]
                if isinstance(how, str)
                else [f"            {line}" for line in how]
            ),
            f"            _set(event, {f!r}, {f})",
            f"            return {f}",
        ]
    lines += [
        "    except Exception as exc:",
        "        raise _undecodable(event, name, exc) from exc",
        "    raise AttributeError(name)",
    ]
    decode: Callable[[PersistedEvent, str], Any] = _compile(
        lines,
        "decode_later",
        {**(names or {}), "_set": object.__setattr__, "_undecodable": _undecodable},
    )
    return decode


def _with_later(
    later: Sequence[str], convert: Mapping[str, Convert] | None, names: Mapping[str, object] | None
) -> Mapping[str, object] | None:
    """``names``, and the ``_decode_later`` of the fields in ``later``."""
    if not later:
        return names
    return {**(names or {}), "_decode_later": _later_decoder(later, convert or {}, names)}


def _check_names(names: Sequence[str]) -> None:
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"columns and given must be field names: {list(names)}")


def _check_layout(
    columns: Sequence[str],
    given: Sequence[str],
    convert: Mapping[str, Convert] | None,
    later: Sequence[str] = (),
) -> None:
    fields = [c for c in columns if c != "_"]
    _check_names([*columns, *given])
    if sorted([*fields, *given]) != sorted(FIELDS):
        raise ValueError(
            f"columns {list(columns)} and given {list(given)} must name every field of "
            f"PersistedEvent exactly once: {list(FIELDS)}"
        )
    unknown = set(convert or ()) - set(FIELDS)
    if unknown:
        raise ValueError(f"convert names no field of PersistedEvent: {sorted(unknown)}")
    if not set(later) <= set(LATER) - set(given):
        raise ValueError(f"later must be read columns among {list(LATER)}: {list(later)}")


def event_decoder(
    columns: Sequence[str],
    *,
    given: Sequence[str] = (),
    convert: Mapping[str, Convert] | None = None,
    names: Mapping[str, object] | None = None,
    later: Sequence[str] = (),
) -> EventDecoder:
    """Compile ``decode(rows, *given) -> list[PersistedEvent]``.

    Rows hold the fields named by ``columns``, in that order; a column named
    ``_`` is skipped. The fields in ``given`` are the same for every row and
    passed after ``rows``. ``convert`` maps a field to the Python expression
    that computes it from its column (the column's name is the variable),
    or to statements that replace that variable with the field (see
    :data:`Convert`), with ``names`` as their globals. The fields in
    ``later`` (some of :data:`~pupsourcing.core.events.LATER`) are converted
    when first read instead: the event keeps their columns until then.

    The decoder fills the slots in one loop, with no call per row: about 30%
    faster than a constructor per row.
    """
    _check_layout(columns, given, convert, later)
    lines = [
        f"def decode(rows, {''.join(f'{g}, ' for g in given)}):",
        "    decoded = []",
        "    keep = decoded.append",
        f"    for ({', '.join(columns)},) in rows:",
        *_build("        ", convert or {}, later),
        "        keep(event)",
        "    return decoded",
    ]
    decode: EventDecoder = _compile(lines, "decode", _with_later(later, convert, names))
    return decode


def event_row_decoder(
    columns: Sequence[str],
    *,
    given: Sequence[str] = (),
    convert: Mapping[str, Convert] | None = None,
    names: Mapping[str, object] | None = None,
    later: Sequence[str] = (),
) -> Callable[..., Callable[[Sequence[Any]], PersistedEvent]]:
    """Compile ``row_decoder(*given) -> decode_row(row) -> PersistedEvent``,
    the one-row form of :func:`event_decoder` (same arguments), for a
    driver that calls it as it reads each row (a psycopg row factory): the
    raw row is then dropped at once instead of being kept with all the
    others until the whole result is decoded."""
    _check_layout(columns, given, convert, later)
    lines = [
        f"def row_decoder({', '.join(given)}):",
        "    def decode_row(row):",
        f"        ({', '.join(columns)},) = row",
        *_build("        ", convert or {}, later),
        "        return event",
        "    return decode_row",
    ]
    row_decoder: Callable[..., Callable[[Sequence[Any]], PersistedEvent]]
    row_decoder = _compile(lines, "row_decoder", _with_later(later, convert, names))
    return row_decoder


def event_builder(given: Sequence[str]) -> Callable[..., PersistedEvent]:
    """Compile ``build(event, *given) -> PersistedEvent``: the fields named in
    ``given`` from the arguments, every other field from the :class:`Event`
    (what an append returns). Equal to ``PersistedEvent(**fields)`` and
    several times faster."""
    _check_names(given)
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise ValueError(f"given names no field of PersistedEvent: {sorted(unknown)}")
    convert = {f: f"_e.{f}" for f in FIELDS if f not in given}
    lines = [
        f"def build(_e, {', '.join(given)}):",
        *_build("    ", convert),
        "    return event",
    ]
    build: Callable[..., PersistedEvent] = _compile(lines, "build")
    return build


def tuple_encoder(
    columns: Sequence[str],
    *,
    given: Sequence[str] = (),
    convert: Mapping[str, str] | None = None,
    names: Mapping[str, object] | None = None,
) -> Callable[..., tuple[Any, ...]]:
    """Compile ``encode(event, *given) -> tuple``: one value per name in
    ``columns``, the event's attribute of that name or, for a name in
    ``given``, the argument. ``convert`` maps a column to an expression of
    ``{}`` (its value) that makes the driver's parameter, with ``names`` as
    its globals."""
    _check_names([*columns, *given])
    missing = set(given) - set(columns)
    unknown = {c for c in columns if c not in given and c not in _EVENT_FIELDS}
    if missing or unknown:
        raise ValueError(
            f"columns {list(columns)} must be fields of Event or given {list(given)}, "
            f"and name every given one"
        )
    convert = convert or {}
    values = [convert.get(c, "{}").format(c if c in given else f"_e.{c}") for c in columns]
    lines = [
        f"def encode(_e, {', '.join(given)}):",
        f"    return ({', '.join(values)},)",
    ]
    encode: Callable[..., tuple[Any, ...]] = _compile(lines, "encode", names)
    return encode


_UNKNOWN_SAFETY = uuid.SafeUUID.unknown
_UUID = uuid.UUID


_UUIDBuilder = _twin(uuid.UUID, "_UUIDBuilder")


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
    # text[8:24:5] is the four dashes' places: one slice, not four lookups.
    if len(text) != 36 or text[8:24:5] != "----":
        return uuid.UUID(text)
    return _uuid(int(text.replace("-", ""), 16))


UUID_FROM_TEXT: tuple[str, ...] = (
    "try:",
    "    if len({0}) != 36 or {0}[8:24:5] != '----':",
    "        raise ValueError",
    "    _i = int({0}.replace('-', '_'), 16)",
    "except ValueError:",
    "    {0} = _uuid_from_text({0})",
    "else:",
    "    _u = _UUIDBuilder()",
    "    _u.int = _i",
    "    _u.is_safe = _UNKNOWN_SAFETY",
    "    _u.__class__ = _UUID",
    "    {0} = _u",
)
""":func:`uuid_from_text` of the variable ``{0}`` as decoder statements
(:data:`Convert`, after ``.format(name)``): a function call per row costs
about as much as building the UUID. Dashes become underscores, which
``int`` skips between digits: a replacement of the same length copies the
text once, where removing them counts them first (about 500 instructions a
row less). Text ``int`` rejects that way (say, an underscore next to a
dash) takes :func:`uuid_from_text`, so the result is always its result."""


def _parse_utc_text(text: str) -> datetime:
    """A timestamp stored as text: UTC when it has no offset, else converted."""
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


TIMESTAMP_FROM_UTC_TEXT: tuple[str, ...] = (
    "try:",
    "    _t = _fromisoformat({0} + '+00:00')",
    "except ValueError:",
    "    {0} = _parse_timestamp({0})",
    "else:",
    "    {0} = _t if _t.tzinfo is not None else _parse_timestamp({0})",
)
"""An aware UTC datetime from the text ``{0}`` (ISO 8601, UTC unless it
has an offset) as decoder statements. Appending the offset and parsing once
is several times faster than ``replace(tzinfo=...)`` or looking for an
offset first; text that has one fails that and is converted (a date alone
takes the offset as a time, hence the check)."""


def uuid_from_bytes(value: bytes | bytearray) -> uuid.UUID:
    """``uuid.UUID(bytes=value)`` without its argument parsing."""
    if len(value) != 16:
        return uuid.UUID(bytes=bytes(value))
    result: Any = _UUIDBuilder()  # _uuid's body: one call less per event read
    result.int = int.from_bytes(value, "big")
    result.is_safe = _UNKNOWN_SAFETY
    result.__class__ = _UUID
    built: uuid.UUID = result
    return built


_IDS = ("correlation_id", "causation_id", "trace_id")

event_with_ids: Callable[[Event, str | None, str | None, str | None], Event] = _compile(
    [
        "def event_with_ids(_e, correlation_id, causation_id, trace_id):",
        "    event = _EventBuilder()",
        *(
            f"    event.{f.name} = {f.name if f.name in _IDS else '_e.' + f.name}"
            for f in dataclasses.fields(Event)
        ),
        "    event.__class__ = _Event",
        "    return event",
    ],
    "event_with_ids",
    {"_EventBuilder": _EventBuilder, "_Event": Event},
)
"""``event_with_ids(event, correlation_id, causation_id, trace_id)``: equal to
``dataclasses.replace(event, correlation_id=..., causation_id=...,
trace_id=...)`` for an :class:`Event` (not a subclass), about three times
faster: the copy's payload and metadata are the checked ones, so
``__post_init__`` is not run again (the append validates every field)."""


def frozen_constructor(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted dataclass ``cls`` a ``__new__`` that fills its
    slots through an unfrozen twin, as the event decoders do: the same
    arguments, defaults and result as the dataclass's ``__init__``, about
    three times faster (that one stores each field with
    ``object.__setattr__``). Subclasses construct as before; pickling and
    :func:`copy.copy` go through the constructor."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING for f in fields):
        raise TypeError(f"{cls.__name__} has a field this constructor does not make")
    names = [f.name for f in fields]
    twin = _twin(cls, f"_{cls.__name__}Builder")
    arguments = ", ".join(
        n if f.default is dataclasses.MISSING else f"{n}=_default_{n}"
        for n, f in zip(names, fields, strict=True)
    )
    passed = ", ".join(names)
    lines = [
        f"def __new__(cls, {arguments}):",
        "    if cls is not _cls:  # a subclass: its own layout, the dataclass's __init__",
        "        self = _object_new(cls)",
        f"        _init(self, {passed})",
        "        return self",
        "    self = _Twin()",
        *(f"    self.{n} = {n}" for n in names),
        "    self.__class__ = _cls",
        "    return self",
    ]
    defaults = {f"_default_{f.name}": f.default for f in fields}
    new = _compile(
        lines,
        "__new__",
        {
            **defaults,
            "_cls": cls,
            "_Twin": twin,
            "_object_new": object.__new__,
            "_init": cls.__init__,
        },
    )
    new.__qualname__ = f"{cls.__qualname__}.__new__"

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(getattr(self, n) for n in names)

    cls.__new__ = new  # type: ignore[method-assign]
    cls.__init__ = object.__init__  # type: ignore[method-assign]
    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls
