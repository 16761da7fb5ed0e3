"""Core value objects and errors (API.md section 1)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import types
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from pupsourcing import (
    AppendResult,
    Event,
    ExpectedVersion,
    InvalidEventError,
    NoEventsError,
    OptimisticConcurrencyError,
    PartitionLayoutError,
    PersistedEvent,
    ProjectionError,
    PupsourcingError,
    SchemaError,
    Stream,
)
from pupsourcing.core._fast import (
    TIMESTAMP_FROM_UTC_TEXT,
    UUID_FROM_TEXT,
    event_builder,
    event_decoder,
    event_row_decoder,
    event_with_ids,
    frozen_constructor,
    tuple_encoder,
    uuid_from_bytes,
    uuid_from_text,
)
from pupsourcing.core.events import LATER
from pupsourcing.store.columns import NAMES as STORED_FIELDS


def persisted(version: int, position: int) -> PersistedEvent:
    return PersistedEvent(
        "Shop", "Order", "o-1", "Placed", b"{}", global_position=position, aggregate_version=version
    )


def test_event_defaults() -> None:
    before = datetime.now(UTC)
    e = Event("Shop", "Order", "o-1", "Placed", b"{}")
    assert e.event_version == 1
    assert isinstance(e.event_id, uuid.UUID)
    assert e.metadata == b"{}"
    assert (e.causation_id, e.correlation_id, e.trace_id) == (None, None, None)
    assert e.created_at.tzinfo is not None
    assert before <= e.created_at <= datetime.now(UTC)
    assert Event("Shop", "Order", "o-1", "Placed", b"{}").event_id != e.event_id


def test_event_is_frozen_and_slotted() -> None:
    e = Event("Shop", "Order", "o-1", "Placed", b"{}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.payload = b"x"  # type: ignore[misc]
    assert not hasattr(e, "__dict__")


def test_event_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Event("Shop", "Order", "o-1", "Placed", b"{}", 2)  # type: ignore[misc]


NOT_BYTES: list[tuple[str, Any, str]] = [
    ("payload", {"id": 1}, "must be bytes, got dict"),
    ("payload", '{"id": 1}', "must be bytes, got str"),
    ("payload", bytearray(b"x"), "must be bytes, got bytearray"),
    ("payload", memoryview(b"x"), "must be bytes, got memoryview"),
    ("payload", None, "must be bytes, got NoneType"),
    ("metadata", {"a": 1}, "must be bytes or None, got dict"),
    ("metadata", "{}", "must be bytes or None, got str"),
    ("metadata", bytearray(b"{}"), "must be bytes or None, got bytearray"),
]


@pytest.mark.parametrize(("field", "value", "problem"), NOT_BYTES)
def test_event_refuses_a_payload_or_metadata_that_is_not_bytes(
    field: str, value: Any, problem: str
) -> None:
    fields: dict[str, Any] = {"payload": b"{}", field: value}
    payload = fields.pop("payload")
    with pytest.raises(InvalidEventError) as caught:
        Event("Shop", "Order", "o-1", "Placed", payload, **fields)
    assert (caught.value.index, caught.value.field) == (None, field)
    assert str(caught.value) == f"{field}: {problem}"  # append's words, with no index
    with pytest.raises(InvalidEventError, match=f"^{field}: "):
        PersistedEvent(
            "Shop",
            "Order",
            "o-1",
            "Placed",
            payload,
            **fields,
            global_position=1,
            aggregate_version=1,
        )


def test_event_json_encodes_compact_deterministic_json() -> None:
    created = datetime(2024, 5, 1, tzinfo=UTC)
    event_id = uuid.uuid4()
    e = Event.json(
        "Shop",
        "Order",
        "o-1",
        "Placed",
        {"total": 12.5, "items": ["a", "b"], "customer": "Zoë"},
        metadata={"user": "u-1", "ip": "::1"},
        event_version=2,
        event_id=event_id,
        causation_id="c",
        correlation_id="r",
        trace_id="t",
        created_at=created,
    )
    assert type(e) is Event
    assert e.payload == '{"customer":"Zoë","items":["a","b"],"total":12.5}'.encode()
    assert e.metadata == b'{"ip":"::1","user":"u-1"}'
    assert (e.event_version, e.event_id, e.created_at) == (2, event_id, created)
    assert (e.causation_id, e.correlation_id, e.trace_id) == ("c", "r", "t")
    # Same data in another key order: the same bytes.
    again = Event.json(
        "Shop", "Order", "o-1", "Placed", {"items": ["a", "b"], "total": 12.5, "customer": "Zoë"}
    )
    assert again.payload == e.payload
    assert again.metadata == b"{}"  # the Event default


@pytest.mark.parametrize(
    ("data", "metadata", "field", "problem"),
    [
        ({"when": datetime(2024, 1, 1)}, None, "payload", "not JSON-serializable"),
        ({"x": float("nan")}, None, "payload", "not JSON-serializable"),
        ({}, {"ids": {uuid.uuid4()}}, "metadata", "not JSON-serializable"),
        ({"s": "\ud800"}, None, "payload", "not valid UTF-8"),
    ],
)
def test_event_json_names_the_field_it_cannot_encode(
    data: Any, metadata: Any, field: str, problem: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        Event.json("Shop", "Order", "o-1", "Placed", data, metadata=metadata)
    assert (caught.value.index, caught.value.field) == (None, field)
    assert problem in str(caught.value)


def test_persisted_event_has_positions_and_event_fields() -> None:
    pe = persisted(3, 17)
    assert (pe.aggregate_version, pe.global_position) == (3, 17)
    assert pe.bounded_context == "Shop"
    with pytest.raises(TypeError):
        PersistedEvent("Shop", "Order", "o-1", "Placed", b"{}")  # type: ignore[call-arg]


def test_stream() -> None:
    empty = Stream("Shop", "Order", "o-1")
    assert empty.version == 0
    assert empty.is_empty
    assert len(empty) == 0
    events = (persisted(1, 4), persisted(2, 9))
    s = Stream("Shop", "Order", "o-1", events)
    assert s.version == 2
    assert not s.is_empty
    assert len(s) == 2
    assert list(s) == list(events)


def test_append_result_versions() -> None:
    assert AppendResult().from_version == 0
    assert AppendResult().to_version == 0
    r = AppendResult((persisted(4, 10), persisted(5, 11)), (10, 11))
    assert (r.from_version, r.to_version) == (3, 5)


def test_exact_zero_is_no_stream() -> None:
    """Equal values answer every question the same (as Go's ``Exact(0)``)."""
    zero, none = ExpectedVersion.exact(0), ExpectedVersion.no_stream()
    questions = (
        lambda v: v.is_any,
        lambda v: v.is_no_stream,
        lambda v: v.is_exact,
        lambda v: v.value,
        str,
        repr,
        hash,
        lambda v: [v.matches(n) for n in range(3)],
    )
    assert [q(zero) for q in questions] == [q(none) for q in questions]
    assert (zero.is_no_stream, zero.is_exact, str(zero)) == (True, False, "NoStream")
    assert ExpectedVersion.exact(1).is_exact


def test_expected_version() -> None:
    any_, none, five = ExpectedVersion.any(), ExpectedVersion.no_stream(), ExpectedVersion.exact(5)
    assert (any_.is_any, any_.is_no_stream, any_.is_exact, any_.value) == (True, False, False, 0)
    assert (none.is_any, none.is_no_stream, none.is_exact, none.value) == (False, True, False, 0)
    assert (five.is_any, five.is_no_stream, five.is_exact, five.value) == (False, False, True, 5)
    assert [str(v) for v in (any_, none, five)] == ["Any", "NoStream", "Exact(5)"]
    assert ExpectedVersion.exact(0) == ExpectedVersion.no_stream()
    assert hash(ExpectedVersion.exact(0)) == hash(ExpectedVersion.no_stream())
    assert ExpectedVersion.exact(5) == five
    assert five != ExpectedVersion.exact(6)
    assert any_ != none
    assert ExpectedVersion.any() == any_
    with pytest.raises(ValueError, match="non-negative"):
        ExpectedVersion.exact(-1)
    with pytest.raises(AttributeError):
        five._value = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "copy_",
    [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_expected_versions_copy_and_pickle_as_values(copy_: Any) -> None:
    for version in (ExpectedVersion.any(), ExpectedVersion.no_stream(), ExpectedVersion.exact(7)):
        copied = copy_(version)
        assert (copied, str(copied), hash(copied)) == (version, str(version), hash(version))


def test_error_hierarchy() -> None:
    for error in (OptimisticConcurrencyError, NoEventsError, InvalidEventError, ProjectionError):
        assert issubclass(error, PupsourcingError)
    assert issubclass(NoEventsError, ValueError)
    assert issubclass(InvalidEventError, ValueError)
    e = InvalidEventError(3, "payload", "must be bytes")
    assert (e.index, e.field) == (3, "payload")
    assert "event 3" in str(e)
    assert "payload" in str(e)
    assert str(InvalidEventError(None, "payload", "must be bytes")) == "payload: must be bytes"


def test_optimistic_concurrency_error_fields() -> None:
    e = OptimisticConcurrencyError(
        aggregate_type="Order", aggregate_id="o-1", expected=ExpectedVersion.exact(2), actual=3
    )
    assert (e.aggregate_type, e.aggregate_id, e.actual) == ("Order", "o-1", 3)
    assert e.expected == ExpectedVersion.exact(2)
    assert "Exact(2)" in str(e)
    assert "3" in str(e)


def test_projection_error_fields() -> None:
    e = ProjectionError("read_model", 42)
    assert (e.projection, e.global_position) == ("read_model", 42)
    assert "read_model" in str(e)
    assert "42" in str(e)


@pytest.mark.parametrize(
    "copy_",
    [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_errors_copy_and_pickle_with_their_attributes(copy_: Any) -> None:
    """As Python's own exceptions do: e.g. to cross a process boundary."""
    errors: list[PupsourcingError] = [
        OptimisticConcurrencyError(
            aggregate_type="Order", aggregate_id="o-1", expected=ExpectedVersion.exact(2), actual=3
        ),
        NoEventsError(),
        InvalidEventError(1, "metadata", "is not valid JSON"),
        ProjectionError("read_model", 42),
        PartitionLayoutError("read_model", 2, 4),
        SchemaError("events", "partition_hash"),
    ]
    for error in errors:
        copied = copy_(error)
        assert type(copied) is type(error)
        assert (str(copied), copied.args, vars(copied)) == (str(error), error.args, vars(error))


def stored_values() -> dict[str, object]:
    """A value for every field of a PersistedEvent, in the stores' order."""
    return {
        "global_position": 9,
        "bounded_context": "b",
        "aggregate_type": "t",
        "aggregate_id": "i",
        "aggregate_version": 4,
        "event_id": uuid.uuid4(),
        "event_type": "e",
        "event_version": 3,
        "payload": b"p",
        "trace_id": "",
        "correlation_id": None,
        "causation_id": "c",
        "metadata": None,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }


def test_built_event_equals_the_constructor() -> None:
    values = stored_values()
    # the builder must set every field the dataclass has
    assert set(values) == {f.name for f in dataclasses.fields(PersistedEvent)}
    assigned = ("global_position", "aggregate_version")
    appended = Event(**{k: v for k, v in values.items() if k not in assigned})  # type: ignore[arg-type]
    build = event_builder(assigned)
    fast = build(appended, values["global_position"], values["aggregate_version"])
    slow = PersistedEvent(**values)  # type: ignore[arg-type]
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.payload = b"x"  # type: ignore[misc]
    # It is a PersistedEvent, not a subclass that would break equality,
    # pickling or ``dataclasses.replace`` elsewhere.
    assert type(fast) is PersistedEvent
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert dataclasses.replace(fast, payload=b"q") == dataclasses.replace(slow, payload=b"q")
    with pytest.raises(dataclasses.FrozenInstanceError):
        del fast.payload  # type: ignore[misc]


def test_event_decoder_reads_any_row_layout() -> None:
    fields = [f.name for f in dataclasses.fields(PersistedEvent)]
    assert sorted(STORED_FIELDS) == sorted(fields)
    values = stored_values()
    created = values["created_at"]
    assert isinstance(created, datetime)
    expected = PersistedEvent(**values)  # type: ignore[arg-type]
    key = ("bounded_context", "aggregate_type", "aggregate_id")
    # the key given once, a trailing column skipped, created_at converted
    columns = [f for f in STORED_FIELDS if f not in key] + ["_"]
    decode = event_decoder(
        columns,
        given=key,
        convert={"created_at": "from_text(created_at)"},
        names={"from_text": datetime.fromisoformat},
    )
    row = tuple(
        created.isoformat() if c == "created_at" else "ignored" if c == "_" else values[c]
        for c in columns
    )
    decoded = decode([row, row], "b", "t", "i")
    assert decoded == [expected, expected]
    assert all(type(e) is PersistedEvent for e in decoded)
    assert decode([], "b", "t", "i") == []
    # The one-row form (a psycopg row factory) builds the same events.
    decode_row = event_row_decoder(
        columns,
        given=key,
        convert={"created_at": "from_text(created_at)"},
        names={"from_text": datetime.fromisoformat},
    )("b", "t", "i")
    one = decode_row(row)
    assert one == expected
    assert type(one) is PersistedEvent
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.payload = b"x"  # type: ignore[misc]


@pytest.mark.parametrize("later", [(), LATER], ids=["now", "later"])
@pytest.mark.parametrize("compile_", [event_decoder, event_row_decoder])
def test_inline_conversions_equal_the_plain_ones(compile_: Any, later: tuple[str, ...]) -> None:
    # Statements instead of an expression: the UUID and the UTC timestamp,
    # canonical text and the forms that take the slow path, converted as
    # the row is decoded or when the field is first read.
    values = stored_values()
    convert = {
        "event_id": [line.format("event_id") for line in UUID_FROM_TEXT],
        "created_at": [line.format("created_at") for line in TIMESTAMP_FROM_UTC_TEXT],
    }
    decoder = compile_(STORED_FIELDS, convert=convert, later=later)
    decode = decoder if compile_ is event_decoder else lambda rows: [decoder()(r) for r in rows]
    ids = [uuid.uuid4(), uuid.UUID(int=(1 << 128) - 1)]
    cases = [
        (
            str(ids[0]),
            ids[0],
            "2026-11-28 15:01:58.123456",
            datetime(2026, 11, 28, 15, 1, 58, 123456, tzinfo=UTC),
        ),
        (
            "{" + ids[1].hex.upper() + "}",
            ids[1],
            "2026-11-28 10:01:58.5-05:00",
            datetime(2026, 11, 28, 15, 1, 58, 500000, tzinfo=UTC),
        ),
        (str(ids[1]), ids[1], "2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
    ]
    for text, expected_id, stamp, expected_at in cases:
        row = tuple(
            text if c == "event_id" else stamp if c == "created_at" else values[c]
            for c in STORED_FIELDS
        )
        [event] = decode([row])
        assert event == PersistedEvent(
            **{**values, "event_id": expected_id, "created_at": expected_at}  # type: ignore[arg-type]
        )
        assert type(event.event_id) is uuid.UUID
        assert event.created_at.utcoffset() is not None
    # Whatever uuid.UUID makes of odd text of the canonical length, so does
    # the inline form (int() reads these too, with or without the dashes).
    for odd in ["1234567_-1234-1234-1234-123456789012", "0x345678-1234-1234-1234-123456789012"]:
        row = tuple(
            odd if c == "event_id" else "2026-11-28" if c == "created_at" else values[c]
            for c in STORED_FIELDS
        )
        assert decode([row])[0].event_id == uuid.UUID(odd)
    bad = tuple("not-a-uuid" if c == "event_id" else values[c] for c in STORED_FIELDS)
    with pytest.raises(ValueError, match="badly formed"):
        decode([bad])[0].event_id  # noqa: B018 (decoding is what is tested)


@pytest.mark.parametrize("compile_", [event_decoder, event_row_decoder])
def test_later_fields_are_converted_once_when_first_read(compile_: Any) -> None:
    values = stored_values()
    expected = PersistedEvent(**values)  # type: ignore[arg-type]
    conversions: list[str] = []

    def convert_id(text: str) -> uuid.UUID:
        conversions.append("event_id")
        return uuid.UUID(text)

    def convert_at(text: str) -> datetime:
        conversions.append("created_at")
        return datetime.fromisoformat(text)

    def convert_meta(text: str | None) -> bytes | None:
        conversions.append("metadata")
        return None if text is None else text.encode()

    decoder = compile_(
        STORED_FIELDS,
        convert={
            "event_id": "convert_id(event_id)",
            "metadata": "convert_meta(metadata)",
            "created_at": "convert_at(created_at)",
        },
        names={"convert_id": convert_id, "convert_at": convert_at, "convert_meta": convert_meta},
        later=LATER,
    )
    decode = decoder if compile_ is event_decoder else lambda rows: [decoder()(r) for r in rows]
    row = tuple(
        str(values[c])
        if c == "event_id"
        else values[c].isoformat()
        if c == "created_at"
        else values[c]  # type: ignore[attr-defined]
        for c in STORED_FIELDS
    )
    first, second, third, fourth = decode([row] * 4)
    assert conversions == []  # nothing converted until read
    assert first.created_at == expected.created_at
    assert first.created_at is first.created_at  # converted once, then kept
    assert conversions == ["created_at"]
    assert first.event_id == expected.event_id
    assert first.metadata is None  # (stored NULL)
    assert conversions == ["created_at", "event_id", "metadata"]
    # Unread, it is the same value as an event decoded at once: equal,
    # same hash and text, copied, pickled and replaced as one.
    assert type(second) is PersistedEvent
    assert second == expected
    assert hash(third) == hash(expected)
    assert repr(fourth) == repr(expected)
    assert pickle.loads(pickle.dumps(decode([row])[0])) == expected
    assert copy.copy(decode([row])[0]) == expected
    assert dataclasses.replace(decode([row])[0], payload=b"q").created_at == expected.created_at
    assert dataclasses.asdict(decode([row])[0]) == dataclasses.asdict(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decode([row])[0].created_at = expected.created_at  # type: ignore[misc]
    with pytest.raises(AttributeError, match="'PersistedEvent' object has no attribute 'nope'"):
        decode([row])[0].nope  # type: ignore[attr-defined]  # noqa: B018


def test_persisted_event_fields_outside_later_are_plain_slots() -> None:
    """A ``__getattr__`` on the class, or a descriptor on any other field,
    would make every field read of every handler take the interpreter's
    slow attribute path (about five times the instructions)."""
    assert "__getattr__" not in vars(PersistedEvent)
    for f in dataclasses.fields(PersistedEvent):
        found = inspect.getattr_static(PersistedEvent, f.name)
        if f.name in LATER:
            assert not isinstance(found, types.MemberDescriptorType), f.name
        else:
            assert isinstance(found, types.MemberDescriptorType), f.name
    empty = object.__new__(PersistedEvent)  # no stored form, no decoder
    with pytest.raises(AttributeError, match="'PersistedEvent' object has no attribute 'event_id'"):
        empty.event_id  # noqa: B018


@pytest.mark.parametrize("compile_", [event_decoder, event_row_decoder])
def test_event_decoder_needs_every_field_exactly_once(compile_: Any) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        compile_(STORED_FIELDS[:-1])
    with pytest.raises(ValueError, match="exactly once"):
        compile_(STORED_FIELDS, given=["aggregate_id"])
    with pytest.raises(ValueError, match="no field"):
        compile_(STORED_FIELDS, convert={"created": "x"})
    with pytest.raises(ValueError, match="field names"):
        compile_([*STORED_FIELDS[:-1], "created_at)"])
    with pytest.raises(ValueError, match="later"):
        compile_(STORED_FIELDS, later=["payload"])


def test_tuple_encoder_equals_the_attributes() -> None:
    values = stored_values()
    e = Event(
        **{k: v for k, v in values.items() if k not in ("global_position", "aggregate_version")}
    )  # type: ignore[arg-type]
    encode = tuple_encoder(
        ["aggregate_id", "aggregate_version", "event_id", "metadata", "created_at"],
        given=["aggregate_version"],
        convert={"event_id": "str({})", "created_at": "text({})"},
        names={"text": datetime.isoformat},
    )
    assert encode(e, 7) == (
        e.aggregate_id,
        7,
        str(e.event_id),
        e.metadata,
        e.created_at.isoformat(),
    )
    with pytest.raises(ValueError, match="fields of Event"):
        tuple_encoder(["global_position"])
    with pytest.raises(ValueError, match="given"):
        tuple_encoder(["payload"], given=["extra"])
    with pytest.raises(ValueError, match="no field"):
        event_builder(["position"])


def test_the_column_description_covers_every_field_once() -> None:
    assert sorted(STORED_FIELDS) == sorted(f.name for f in dataclasses.fields(PersistedEvent))


def test_fast_uuids_are_plain_immutable_uuids() -> None:
    for expected in [uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)]:
        for made in [uuid_from_text(str(expected)), uuid_from_bytes(expected.bytes)]:
            assert type(made) is uuid.UUID
            assert made == expected
            assert hash(made) == hash(expected)
            assert str(made) == str(expected)
            assert made.is_safe is uuid.SafeUUID.unknown
            assert pickle.loads(pickle.dumps(made)) == expected
            with pytest.raises(TypeError, match="immutable"):
                made.int = 1  # type: ignore[misc]
    # Anything but the canonical forms goes through uuid.UUID (and its errors).
    assert uuid_from_text("{12345678123456781234567812345678}") == uuid.UUID(
        "12345678-1234-5678-1234-567812345678"
    )
    with pytest.raises(ValueError, match="badly formed"):
        uuid_from_text("not-a-uuid")
    with pytest.raises(ValueError, match="16-char"):
        uuid_from_bytes(b"short")


def test_event_with_ids_is_dataclasses_replace() -> None:
    original = Event("Shop", "Order", "o-1", "Placed", b"{}", metadata=None, causation_id="c-0")
    for ids in [("corr", "cause", "f" * 32), (None, None, None), ("corr", None, None)]:
        made = event_with_ids(original, *ids)
        expected = dataclasses.replace(
            original, correlation_id=ids[0], causation_id=ids[1], trace_id=ids[2]
        )
        assert type(made) is Event
        assert made == expected
        assert hash(made) == hash(expected)
        assert pickle.loads(pickle.dumps(made)) == expected
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.trace_id = "x"  # type: ignore[misc]
    assert original.causation_id == "c-0"  # the original is left alone


@frozen_constructor
@dataclasses.dataclass(frozen=True, slots=True)
class _Quick:
    a: str
    b: tuple[int, ...] = ()
    c: bool = False
    d: object = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: str
    b: tuple[int, ...] = ()
    c: bool = False
    d: object = None


def test_frozen_constructor_builds_what_the_dataclass_init_builds() -> None:
    """Same arguments, defaults, errors and result; still frozen; pickling,
    copies and ``dataclasses.replace`` go through it; a subclass constructs
    as before."""
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("x",), {}),
        (("x", (1,)), {"d": 4}),
        ((), {"a": "y", "c": True}),
    ]
    for args, kwargs in cases:
        quick, plain = _Quick(*args, **kwargs), _Plain(*args, **kwargs)
        assert type(quick) is _Quick
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
        assert repr(quick).removeprefix("_Quick") == repr(plain).removeprefix("_Plain")
        assert quick == _Quick(*args, **kwargs)
        assert hash(quick) == hash(_Quick(*args, **kwargs))
        for copied in (pickle.loads(pickle.dumps(quick)), copy.copy(quick), copy.deepcopy(quick)):
            assert copied == quick
            assert type(copied) is _Quick
    quick = _Quick("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.a = "z"  # type: ignore[misc]
    assert dataclasses.replace(quick, c=True) == _Quick("x", c=True)
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        (("x",), {"e": 1}),
        (("x", (), False, None, 5), {}),
    ]
    for bad_args, bad_kwargs in bad:
        with pytest.raises(TypeError):
            _Plain(*bad_args, **bad_kwargs)
        with pytest.raises(TypeError):
            _Quick(*bad_args, **bad_kwargs)

    class Sub(_Quick):
        __slots__ = ("extra",)

    sub = Sub("s", c=True)
    assert type(sub) is Sub
    assert (sub.a, sub.b, sub.c, sub.d) == ("s", (), True, None)


def test_frozen_constructor_refuses_what_it_cannot_build() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Post:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Factory, Post):
        with pytest.raises(TypeError, match=cls.__name__):
            frozen_constructor(cls)
