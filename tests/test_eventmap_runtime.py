"""eventmap-gen, run-time side: the generated module's round trips and errors.

The kitchen-sink package (every supported field type) is generated into a
temporary directory and imported; values come from hypothesis.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Backend
from eventmap_fixtures.kitchen_sink import common
from eventmap_fixtures.kitchen_sink.v1 import everything as ev1
from eventmap_fixtures.kitchen_sink.v1 import orders as o1
from eventmap_fixtures.kitchen_sink.v2 import orders as o2
from eventmap_fixtures.support import KITCHEN_SINK, assert_same
from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.domain import Aggregate, Codec, CodecError, Repository
from pupsourcing.eventmap import (
    EventMappingError,
    EventTypeMismatchError,
    PayloadError,
    UnknownEventClassError,
    UnknownEventTypeError,
    UnknownEventVersionError,
    generate_mapping,
)


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated mapping of the kitchen-sink package, imported."""
    root = tmp_path_factory.mktemp("generated")
    (root / "kitchen_sink_mapping.py").write_text(generate_mapping(KITCHEN_SINK))
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("kitchen_sink_mapping")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("kitchen_sink_mapping", None)


# --- values --------------------------------------------------------------------------------

# Every UTC offset of whole seconds (real zones use whole minutes; history has seconds).
offsets = st.integers(-86399, 86399).map(lambda s: timezone(timedelta(seconds=s)))
aware = st.datetimes(timezones=offsets)
decimals = st.decimals(allow_nan=False, allow_infinity=False)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text()
money = st.builds(common.Money, decimals, st.sampled_from(common.Currency))
line = st.builds(o1.Line, texts, st.integers(), money, st.none() | texts)
customer = st.builds(o2.Customer, texts, st.none() | texts, st.sampled_from(common.Currency))

everything = st.builds(
    ev1.Everything,
    text=texts,
    count=st.integers(),
    ratio=floats,
    flag=st.booleans(),
    blob=st.binary(),
    at=aware,
    day=st.dates(),
    ident=st.uuids(),
    amount=decimals,
    status=st.sampled_from(o1.Status),
    maybe=st.none() | st.integers(),
    maybe_money=st.none() | money,
    ints=st.lists(st.integers()),
    nested=st.lists(st.lists(texts)),
    frozen=st.lists(decimals).map(tuple),
    wallet=st.dictionaries(texts, money),
    moments=st.lists(st.none() | aware),
    tags=st.lists(st.sampled_from(ev1.Tag)),
    either=st.none() | st.uuids(),
    optional_lists=st.none() | st.lists(st.dictionaries(texts, st.lists(st.booleans()))),
    priority=st.sampled_from(ev1.Priority),
    days=st.lists(st.dates()).map(tuple),
)
domain_events = st.one_of(
    everything,
    st.builds(
        o1.OrderPlaced,
        st.uuids(),
        aware,
        st.lists(line).map(tuple),
        money,
        st.sampled_from(o1.Status),
    ),
    st.builds(o1.OrderCancelled, st.uuids(), texts),
    st.builds(
        o2.OrderPlaced,
        order_id=st.uuids(),
        placed_at=aware,
        customer=customer,
        lines=st.lists(line),
        total=money,
        status=st.sampled_from(o1.Status),
        delivery=st.none() | st.dates(),
        notes=st.dictionaries(texts, texts),
    ),
    st.builds(o2.OrderCancelled, order_id=st.uuids(), reason=texts, refund=st.none() | money),
    st.just(o2.OrderArchived()),
    st.builds(o2.Rejected, order_id=st.uuids(), code=st.integers(min_value=0)),
)

ORDER = uuid.UUID("12345678-1234-5678-1234-567812345678")
EUR = common.Money(Decimal("12.50"), common.Currency.EUR)


def stored(event: Event, position: int = 1) -> PersistedEvent:
    """The event as a store would give it back."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(Event)}
    return PersistedEvent(**fields, global_position=position, aggregate_version=position)


def with_payload(event: Event, payload: object) -> Event:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return dataclasses.replace(event, payload=raw)


def cancelled_v2() -> o2.OrderCancelled:
    return o2.OrderCancelled(order_id=ORDER, reason="late", refund=EUR)


def placed_v2(**changes: Any) -> o2.OrderPlaced:
    event = o2.OrderPlaced(
        order_id=ORDER,
        placed_at=datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        customer=o2.Customer("Ada", None, common.Currency.USD),
        lines=[o1.Line("book", 2, EUR), o1.Line("pen", 1, EUR, note="blue")],
        total=common.Money(Decimal("37.50"), common.Currency.EUR),
        status=o1.Status.CLOSED,
    )
    return dataclasses.replace(event, **changes)


# --- round trips ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(event=domain_events)
def test_every_event_round_trips_exactly(m: ModuleType, event: Any) -> None:
    es = m.to_es_event("Sales", "Order", "order-1", event)
    assert es.event_type == type(event).__name__
    assert es.event_version == int(type(event).__module__.split(".")[-2][1:])
    assert_same(m.from_es_event(es), event)
    assert_same(m.from_es_event(stored(es)), event)


@settings(max_examples=50, deadline=None)
@given(events=st.lists(domain_events, max_size=5))
def test_sequences_round_trip_in_order(m: ModuleType, events: list[Any]) -> None:
    es = m.to_es_events("Sales", "Order", "order-1", events, correlation_id="c-1")
    assert [e.event_type for e in es] == [type(e).__name__ for e in events]
    assert all(e.correlation_id == "c-1" for e in es)
    assert_same(m.from_es_events([stored(e, i + 1) for i, e in enumerate(es)]), events)


def test_same_class_name_in_two_versions(m: ModuleType) -> None:
    v1 = o1.OrderCancelled(ORDER, "late")
    v2 = cancelled_v2()
    first, second = m.to_es_events("Sales", "Order", "o", [v1, v2])
    assert (first.event_type, first.event_version) == ("OrderCancelled", 1)
    assert (second.event_type, second.event_version) == ("OrderCancelled", 2)
    assert type(m.from_es_event(first)) is o1.OrderCancelled
    assert type(m.from_es_event(second)) is o2.OrderCancelled
    assert m.event_type_of(v1) == m.event_type_of(v2) == "OrderCancelled"
    assert (m.event_version_of(v1), m.event_version_of(v2)) == (1, 2)
    assert m.from_order_cancelled_v1(first) == v1
    assert m.from_order_cancelled_v2(second) == v2


def test_the_payload_is_plain_json_every_language_can_read(m: ModuleType) -> None:
    event = ev1.Everything(
        text="ünïcode ✓",
        count=-7,
        ratio=0.1,
        flag=True,
        blob=b"\x00\xff",
        at=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        day=date(2024, 2, 29),
        ident=ORDER,
        amount=Decimal("1.10"),
        status=o1.Status.LOST,
        maybe=None,
        maybe_money=EUR,
        ints=[1, 2],
        nested=[["a"], []],
        frozen=(Decimal("1E+2"), Decimal("-0")),
        wallet={"cash": EUR},
        moments=[None, datetime(2024, 1, 1, tzinfo=UTC)],
        tags=[ev1.Tag.RED],
        priority=ev1.Priority.HIGH,
    )
    payload = m.to_everything_v1("Lab", "Thing", "t", event).payload
    assert payload.decode("utf-8") == (
        '{"text":"ünïcode ✓","count":-7,"ratio":0.1,"flag":true,"blob":"AP8=",'
        '"at":"2024-01-02T03:04:05.000006+05:30","day":"2024-02-29",'
        '"ident":"12345678-1234-5678-1234-567812345678","amount":"1.10","status":-1,'
        '"maybe":null,"maybe_money":{"amount":"12.50","currency":"eur"},"ints":[1,2],'
        '"nested":[["a"],[]],"frozen":["1E+2","-0"],'
        '"wallet":{"cash":{"amount":"12.50","currency":"eur"}},'
        '"moments":[null,"2024-01-01T00:00:00+00:00"],"tags":["red"],"either":null,'
        '"optional_lists":null,"priority":2,"days":[]}'
    )
    assert_same(m.from_es_event(Event("Lab", "Thing", "t", "Everything", payload)), event)


def test_per_type_helpers_fill_in_the_store_event(m: ModuleType) -> None:
    event = m.to_order_cancelled_v2(
        "Sales",
        "Order",
        "order-9",
        cancelled_v2(),
        causation_id="cause",
        correlation_id="corr",
        trace_id="trace",
        metadata=b'{"user":"ada"}',
    )
    assert isinstance(event, Event)
    assert (event.bounded_context, event.aggregate_type, event.aggregate_id) == (
        "Sales",
        "Order",
        "order-9",
    )
    assert (event.event_type, event.event_version) == ("OrderCancelled", 2)
    assert (event.causation_id, event.correlation_id, event.trace_id) == ("cause", "corr", "trace")
    assert event.metadata == b'{"user":"ada"}'
    assert event.created_at.tzinfo is not None
    plain = m.to_order_archived_v2("Sales", "Order", "order-9", o2.OrderArchived())
    assert plain.metadata == b"{}"
    assert plain.payload == b"{}"
    assert plain.event_id != event.event_id
    assert (plain.causation_id, plain.correlation_id, plain.trace_id) == (None, None, None)
    assert m.from_order_archived_v2(plain) == o2.OrderArchived()


def test_round_trip_through_the_store(m: ModuleType, backend: Backend) -> None:
    history = [o1.OrderPlaced(ORDER, datetime(2023, 1, 1, tzinfo=UTC), (), EUR), placed_v2()]
    history.append(cancelled_v2())
    conn = backend.connection()
    backend.store.append(
        conn,
        ExpectedVersion.no_stream(),
        m.to_es_events("Sales", "Order", str(ORDER), history, trace_id="t-1"),
    )
    conn.commit()
    stream = backend.store.read_aggregate_stream(conn, "Sales", "Order", str(ORDER))
    assert [e.event_version for e in stream] == [1, 2, 2]
    assert [e.trace_id for e in stream] == ["t-1"] * 3
    assert_same(m.from_es_events(stream.events), history)
    assert_same(m.from_es_events(backend.store.read_events(conn, 0, 10)), history)


# --- reading: unknown or mismatched events ----------------------------------------------------


def test_unknown_event_type_names_type_and_version(m: ModuleType) -> None:
    event = Event("Sales", "Order", "o", "OrderTeleported", b"{}", event_version=3)
    with pytest.raises(UnknownEventTypeError) as caught:
        m.from_es_event(event)
    assert str(caught.value) == (
        "unknown event type 'OrderTeleported' (event_version 3): no class in the mapping "
        "has that name"
    )
    assert (caught.value.event_type, caught.value.event_version) == ("OrderTeleported", 3)
    assert isinstance(caught.value, EventMappingError)
    assert isinstance(caught.value, ValueError)


def test_unknown_version_names_type_version_and_the_known_ones(m: ModuleType) -> None:
    event = m.to_es_event("Sales", "Order", "o", cancelled_v2())
    with pytest.raises(UnknownEventVersionError) as caught:
        m.from_es_event(dataclasses.replace(event, event_version=7))
    assert str(caught.value) == (
        "unknown version 7 of event type 'OrderCancelled' (the mapping knows versions 1, 2)"
    )
    assert caught.value.known_versions == (1, 2)
    with pytest.raises(UnknownEventVersionError, match="knows version 2\\)"):
        m.from_es_event(dataclasses.replace(event, event_type="OrderArchived", event_version=1))


def test_sequences_say_which_event_failed(m: ModuleType) -> None:
    good = m.to_es_event("Sales", "Order", "o", cancelled_v2())
    bad = dataclasses.replace(good, event_version=9)
    with pytest.raises(UnknownEventVersionError, match=r"^event 1 \(global position 42\): unknown"):
        m.from_es_events([stored(good, 41), stored(bad, 42)])
    with pytest.raises(UnknownEventVersionError, match=r"^event 1: unknown version 9"):
        m.from_es_events([good, bad])


def test_per_type_readers_refuse_other_events(m: ModuleType) -> None:
    event = m.to_es_event("Sales", "Order", "o", cancelled_v2())
    with pytest.raises(EventTypeMismatchError, match="expected a OrderCancelled v1 event, got"):
        m.from_order_cancelled_v1(event)
    with pytest.raises(EventTypeMismatchError, match="expected a OrderPlaced v2 event, got Order"):
        m.from_order_placed_v2(event)


# --- reading: payloads that do not match the class --------------------------------------------


def placed_v2_json(m: ModuleType) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(m.to_es_event("S", "O", "o", placed_v2()).payload)
    return data


def set_path(data: Any, path: list[str | int], value: object) -> None:
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


BAD_VALUES: list[tuple[list[str | int], object, str]] = [
    (["order_id"], "not-a-uuid", "field 'order_id': 'not-a-uuid' is not a UUID"),
    (["order_id"], None, "field 'order_id': expected str, got None"),
    (["placed_at"], "yesterday", "field 'placed_at': 'yesterday' is not an ISO 8601 datetime"),
    (["placed_at"], "2024-01-01T10:00:00", "field 'placed_at': '2024-01-01T10:00:00' has no UTC"),
    (["delivery"], "2024-13-01", "field 'delivery': '2024-13-01' is not an ISO 8601 date"),
    (["status"], 5, "field 'status': 5 is not a Status value"),
    (["status"], "2", "field 'status': expected int, got str"),
    (["status"], True, "field 'status': expected int, got bool"),
    (["customer", "currency"], "gbp", "field 'customer.currency': 'gbp' is not a Currency value"),
    (["customer", "email"], 3, "field 'customer.email': expected str, got int"),
    (["customer"], [], "field 'customer': expected a JSON object, got list"),
    (["lines", 1, "price", "amount"], 12.5, "field 'lines[1].price.amount': expected str, got"),
    (["lines", 1, "price", "amount"], "twelve", "'lines[1].price.amount': 'twelve' is not a dec"),
    (["lines", 0, "quantity"], 2.0, "field 'lines[0].quantity': expected int, got float"),
    (["lines"], {"0": {}}, "field 'lines': expected list, got dict"),
    (["notes"], {"a": 1}, """field 'notes["a"]': expected str, got int"""),
    (["lines", 1, "note"], 7, "field 'lines[1].note': expected str, got int"),
    (["notes"], ["a"], "field 'notes': expected dict, got list"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_VALUES)
def test_mistyped_fields_name_the_event_and_the_path(
    m: ModuleType, path: list[str | int], value: object, message: str
) -> None:
    data = placed_v2_json(m)
    set_path(data, path, value)
    event = with_payload(m.to_es_event("S", "O", "o", placed_v2()), data)
    with pytest.raises(PayloadError) as caught:
        m.from_es_event(event)
    assert str(caught.value).startswith("OrderPlaced v2: ")
    assert message in str(caught.value)
    assert (caught.value.event_type, caught.value.event_version) == ("OrderPlaced", 2)


def test_missing_and_extra_fields(m: ModuleType) -> None:
    base = m.to_es_event("S", "O", "o", placed_v2())
    data = placed_v2_json(m)
    del data["total"], data["status"]
    with pytest.raises(PayloadError, match=r"^OrderPlaced v2: missing fields 'total', 'status'$"):
        m.from_es_event(with_payload(base, data))
    data = placed_v2_json(m)
    data["colour"] = "red"
    with pytest.raises(PayloadError, match=r"^OrderPlaced v2: unexpected field 'colour'$"):
        m.from_es_event(with_payload(base, data))
    data = placed_v2_json(m)
    del data["lines"][0]["price"]
    with pytest.raises(PayloadError, match=r"field 'lines\[0\]': missing field 'price'$"):
        m.from_es_event(with_payload(base, data))
    # A field with a default in the class must still be in the payload.
    data = placed_v2_json(m)
    del data["notes"]
    with pytest.raises(PayloadError, match="missing field 'notes'"):
        m.from_es_event(with_payload(base, data))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "the payload is not UTF-8 JSON"),
        (b"{not json", "the payload is not UTF-8 JSON"),
        (b'{"reason": "\xff"}', "the payload is not UTF-8 JSON"),
        (b"[]", "expected a JSON object, got list"),
        (b"null", "expected a JSON object, got None"),
    ],
)
def test_payloads_that_are_not_a_json_object(m: ModuleType, payload: bytes, message: str) -> None:
    event = with_payload(m.to_es_event("S", "O", "o", cancelled_v2()), payload)
    with pytest.raises(PayloadError, match=f"^OrderCancelled v2: {message}"):
        m.from_es_event(event)


def test_payloads_the_go_library_writes_for_the_same_events(m: ModuleType) -> None:
    """Go's encoding/json writes a nil slice or map (the zero value) as null, and
    time.Time with nanoseconds (RFC 3339): they read as empty and to the microsecond."""
    placed = m.to_es_event("S", "O", "o", placed_v2())
    go = {
        **placed_v2_json(m),
        "placed_at": "2024-05-01T10:00:00.123456789+02:00",
        "lines": None,
        "notes": None,
    }
    decoded = m.from_es_event(with_payload(placed, go))
    assert_same(decoded.lines, [])
    assert_same(decoded.notes, {})
    assert_same(
        decoded.placed_at,
        datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    )
    everything = m.to_everything_v1("L", "T", "t", sample_everything())
    go = {
        **json.loads(everything.payload),
        "blob": None,
        "ints": None,
        "nested": [None, ["a"]],
        "frozen": None,
        "wallet": None,
        "tags": None,
        "days": None,
        "optional_lists": [{"k": None}],
        "at": "2024-05-01T08:00:00.5Z",
    }
    decoded = m.from_es_event(with_payload(everything, go))
    assert_same(decoded.blob, b"")
    assert_same(decoded.ints, [])
    assert_same(decoded.nested, [[], ["a"]])
    assert_same(decoded.frozen, ())
    assert_same(decoded.wallet, {})
    assert_same(decoded.tags, [])
    assert_same(decoded.days, ())
    assert_same(decoded.optional_lists, [{"k": []}])
    assert_same(decoded.at, datetime(2024, 5, 1, 8, 0, 0, 500000, tzinfo=UTC))
    # An optional container keeps null as None.
    assert (
        m.from_es_event(with_payload(everything, {**go, "optional_lists": None})).optional_lists
        is None
    )


def test_special_float_and_bytes_values_are_refused(m: ModuleType) -> None:
    everything = m.to_everything_v1("L", "T", "t", sample_everything())
    data = json.loads(everything.payload)
    for key, value, message in [
        ("ratio", float("nan"), "field 'ratio': nan is not a finite number"),
        ("ratio", 10**400, "is not a finite number"),
        ("blob", "not base64!", "field 'blob': not valid base64"),
        ("flag", 1, "field 'flag': expected bool, got int"),
        ("frozen", "abc", "field 'frozen': expected list, got str"),
        ("nested", [["a"], ["b", 3]], "field 'nested[1][1]': expected str, got int"),
        ("moments", [None, "x"], "field 'moments[1]': 'x' is not an ISO 8601 datetime"),
        ("wallet", {"k": {"amount": "1"}}, """field 'wallet["k"]': missing field 'currency'"""),
    ]:
        changed = {**data, key: value}
        with pytest.raises(PayloadError, match=re.escape(message)):
            m.from_es_event(with_payload(everything, json.dumps(changed).encode()))
    # JSON integers are fine for floats (other producers write 1, not 1.0)
    decoded = m.from_es_event(with_payload(everything, {**data, "ratio": 3}))
    assert_same(decoded.ratio, 3.0)


def test_what_the_class_itself_rejects_becomes_a_payload_error(m: ModuleType) -> None:
    event = m.to_es_event("S", "O", "o", o2.Rejected(ORDER, 5))
    bad = with_payload(event, {"order_id": str(ORDER), "code": -1})
    with pytest.raises(PayloadError) as caught:
        m.from_es_event(bad)
    assert str(caught.value) == (
        "Rejected v2: the class rejected the payload: code must not be negative"
    )
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (AssertionError("code is unlucky"), "AssertionError('code is unlucky')"),
        (KeyError("code"), "KeyError('code')"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError('division by zero')"),
    ],
)
def test_any_exception_of_the_class_itself_becomes_a_payload_error(
    m: ModuleType, monkeypatch: pytest.MonkeyPatch, raised: Exception, message: str
) -> None:
    """Like JsonCodec: whatever a __post_init__ raises, the reader gets a
    PayloadError naming the event, caused by the original."""

    def refuse(self: object) -> None:
        raise raised

    event = m.to_es_event("S", "O", "o", o2.Rejected(ORDER, 5))
    monkeypatch.setattr(o2.Rejected, "__post_init__", refuse)
    for decode in (m.from_es_event, lambda e: m.CODEC.decode("Rejected", 2, e.payload)):
        with pytest.raises(PayloadError) as caught:
            decode(event)
        assert str(caught.value) == f"Rejected v2: the class rejected the payload: {message}"
        assert caught.value.__cause__ is raised


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(sorted(ev1.Everything.__dataclass_fields__.keys() - {"derived", "LIMIT"})),
    value=json_values,
)
def test_any_json_in_any_field_decodes_or_raises_payload_error(
    m: ModuleType, key: str, value: object
) -> None:
    event = m.to_everything_v1("L", "T", "t", sample_everything())
    data = json.loads(event.payload)
    data[key] = value
    error: PayloadError | None = None
    try:
        m.from_es_event(with_payload(event, data))
    except PayloadError as exc:
        error = exc
    if error is not None:  # and any other exception fails the test
        assert error.field is not None
        assert error.field.split(".")[0].split("[")[0] == key


def sample_everything() -> ev1.Everything:
    return ev1.Everything(
        text="t",
        count=1,
        ratio=1.5,
        flag=False,
        blob=b"x",
        at=datetime(2024, 1, 1, tzinfo=UTC),
        day=date(2024, 1, 1),
        ident=ORDER,
        amount=Decimal("1"),
        status=o1.Status.OPEN,
        maybe=1,
        maybe_money=None,
        ints=[],
        nested=[],
        frozen=(),
        wallet={},
        moments=[],
        tags=[],
    )


# --- writing: values that do not match the class ----------------------------------------------


BAD_EVENTS: list[tuple[Any, str]] = [
    (placed_v2(placed_at=datetime(2024, 1, 1)), "field 'placed_at': naive datetime"),
    (
        placed_v2(placed_at=datetime(2024, 1, 1, tzinfo=timezone(timedelta(microseconds=5)))),
        "field 'placed_at': UTC offset 0:00:00.000005 is not whole seconds",
    ),
    (placed_v2(order_id=str(ORDER)), "field 'order_id': expected UUID, got str"),
    (placed_v2(lines=(o1.Line("a", 1, EUR),)), "field 'lines': expected list, got tuple"),
    (placed_v2(lines=[o1.Line("a", "1", EUR)]), "field 'lines[0].quantity': expected int, got"),
    (placed_v2(status=2), "field 'status': expected Status, got int"),
    (placed_v2(notes={1: "x"}), "field 'notes': expected str keys, got int"),
    (placed_v2(delivery=datetime(2024, 1, 1, tzinfo=UTC)), "'delivery': expected date, got dat"),
    (placed_v2(total=Decimal(1)), "field 'total': expected Money, got Decimal"),
    (dataclasses.replace(sample_everything(), ratio=float("inf")), "'ratio': inf is not a fin"),
    (dataclasses.replace(sample_everything(), blob="x"), "field 'blob': expected bytes, got str"),
    (dataclasses.replace(sample_everything(), blob=None), "field 'blob': expected bytes, got None"),
    (dataclasses.replace(sample_everything(), ints=None), "field 'ints': expected list, got None"),
    (dataclasses.replace(sample_everything(), wallet=None), "'wallet': expected dict, got None"),
    (dataclasses.replace(sample_everything(), frozen=None), "'frozen': expected tuple, got None"),
    (placed_v2(notes=None), "field 'notes': expected dict, got None"),
    (
        dataclasses.replace(sample_everything(), text="ok \ud800"),
        "field 'text': text with a lone surrogate ('\\ud800' at 3) cannot be encoded as UTF-8",
    ),
    (
        dataclasses.replace(sample_everything(), nested=[[], ["a", "\udc00"]]),
        "field 'nested[1][1]': text with a lone surrogate ('\\udc00' at 0)",
    ),
    (
        dataclasses.replace(sample_everything(), wallet={"\ud800": EUR}),
        "field 'wallet': text with a lone surrogate ('\\ud800' at 0)",
    ),
    (
        placed_v2(lines=[o1.Line("a", 1, EUR, note="\udfff")]),
        "field 'lines[0].note': text with a lone surrogate ('\\udfff' at 0)",
    ),
    (
        placed_v2(customer=o2.Customer("\ud800", None, common.Currency.USD)),
        "field 'customer.name': text with a lone surrogate",
    ),
]


@pytest.mark.parametrize(("event", "message"), BAD_EVENTS)
def test_values_that_would_not_read_back_are_refused_when_writing(
    m: ModuleType, event: Any, message: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        m.to_es_events("S", "O", "o", [cancelled_v2(), event])
    assert str(caught.value).startswith(f"event 1: {type(event).__name__} v")
    assert message in str(caught.value)


def test_a_lone_surrogate_another_writer_escaped_still_reads(m: ModuleType) -> None:
    """Writing refuses it (naming the field); reading takes it, as JsonCodec does, so a
    stream another program wrote (json.dumps escapes it as \\ud800) stays readable."""
    event = m.to_es_event("S", "O", "o", cancelled_v2())
    data = json.loads(event.payload)
    escaped = json.dumps({**data, "reason": "late \ud800"}).encode()
    assert b"\\ud800" in escaped
    assert m.from_es_event(with_payload(event, escaped)).reason == "late \ud800"


def test_a_subclass_of_a_value_type_is_not_silently_truncated(m: ModuleType) -> None:
    @dataclasses.dataclass(frozen=True)
    class Tagged(o1.Line):
        colour: str = "red"

    with pytest.raises(PayloadError, match=r"'lines\[0\]': expected Line, got Tagged"):
        m.to_es_event("S", "O", "o", placed_v2(lines=[Tagged("a", 1, EUR)]))


def test_objects_that_are_not_mapped_events(m: ModuleType) -> None:
    with pytest.raises(UnknownEventClassError, match=r"builtins\.dict is not an event class"):
        m.to_es_event("S", "O", "o", {"order_id": ORDER})
    with pytest.raises(UnknownEventClassError, match=r"Line is not an event class"):
        m.event_type_of(o1.Line("a", 1, EUR))  # a value type, not an event
    with pytest.raises(TypeError, match=r"^event 0: "):
        m.to_es_events("S", "O", "o", [object()])
    with pytest.raises(UnknownEventClassError, match=r"expected .*v2\.orders\.OrderCancelled, got"):
        m.to_order_cancelled_v2("S", "O", "o", o1.OrderCancelled(ORDER, "late"))


# --- CODEC: the domain layer's codec protocol ---------------------------------------------------


class KitchenOrder(Aggregate):
    bounded_context = "Sales"
    aggregate_type = "Order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.history: list[object] = []

    def apply(self, event: object) -> None:
        self.history.append(event)


@settings(max_examples=100, deadline=None)
@given(event=domain_events)
def test_codec_encodes_like_to_es_event_and_decodes_back(m: ModuleType, event: Any) -> None:
    assert isinstance(m.CODEC, Codec)
    event_type, event_version, payload = m.CODEC.encode(event)
    es = m.to_es_event("Sales", "Order", "order-1", event)
    assert (event_type, event_version, payload) == (es.event_type, es.event_version, es.payload)
    assert_same(m.CODEC.decode(event_type, event_version, payload), event)


def test_codec_errors_name_the_event(m: ModuleType) -> None:
    with pytest.raises(UnknownEventClassError):
        m.CODEC.encode(object())
    with pytest.raises(UnknownEventVersionError, match=r"version 9 of event type .OrderPlaced."):
        m.CODEC.decode("OrderPlaced", 9, b"{}")


def test_codec_errors_are_codec_errors_naming_type_and_version(m: ModuleType) -> None:
    """The Codec protocol's contract: CodecError, as JsonCodec raises."""
    with pytest.raises(CodecError, match="is not an event class"):
        m.CODEC.encode(object())
    with pytest.raises(CodecError, match="'ratio': inf is not a finite number") as caught:
        m.CODEC.encode(dataclasses.replace(sample_everything(), ratio=float("inf")))
    assert (caught.value.event_type, caught.value.event_version) == ("Everything", 1)
    with pytest.raises(CodecError, match="unknown event type 'Teleported'"):
        m.CODEC.decode("Teleported", 1, b"{}")
    with pytest.raises(CodecError, match="unknown version 9 of event type 'OrderPlaced'"):
        m.CODEC.decode("OrderPlaced", 9, b"{}")
    payload = json.loads(m.CODEC.encode(sample_everything())[2])
    for bad in (b"{}", b"[]", json.dumps({**payload, "ratio": float("nan")}).encode()):
        with pytest.raises(CodecError, match=r"^Everything v1: ") as caught:
            m.CODEC.decode("Everything", 1, bad)
        assert (caught.value.event_type, caught.value.event_version) == ("Everything", 1)


def test_codec_plugs_into_a_repository(m: ModuleType, backend: Backend) -> None:
    repo = Repository(backend.store, KitchenOrder, m.CODEC)
    conn = backend.connection()
    order = KitchenOrder(str(ORDER))
    history = [o1.OrderPlaced(ORDER, datetime(2023, 1, 1, tzinfo=UTC), (), EUR), placed_v2()]
    for event in history:
        order.record(event)
    repo.save(conn, order)
    conn.commit()
    loaded = repo.load(conn, str(ORDER))
    assert loaded.version == 2
    assert_same(loaded.history, history)
    order.record(object())
    with pytest.raises(CodecError, match=r"pending event 0 \(object\)"):
        repo.save(conn, order)
    conn.rollback()
    assert backend.count_events() == 2
