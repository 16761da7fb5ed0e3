"""JsonCodec: exact round trips, deterministic compact payloads, upcasting,
and clear errors; the Aggregate base class on its own."""

from __future__ import annotations

import enum
import json
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, NewType
from uuid import UUID

import msgspec
import pydantic
import pytest

from domain_model import Address, Channel, ItemAdded, Order, OrderPlaced, OrderShipped
from pupsourcing import PupsourcingError
from pupsourcing.domain import Codec, CodecError, JsonCodec


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Everything:
    when: datetime
    day: date
    at: time
    id: UUID
    amount: Decimal
    channel: Channel
    level: Level
    address: Address
    addresses: list[Address]
    pair: tuple[int, str]
    many: tuple[Decimal, ...]
    by_id: dict[UUID, Address]
    by_level: dict[Level, list[int]]
    by_number: dict[int, str]
    tags: frozenset[str]
    blob: bytes
    ratio: float
    maybe: Address | None = None
    either: int | str = 0
    kind: Literal["a", "b"] = "a"
    plain: dict[str, Any] = field(default_factory=dict)


def everything() -> Everything:
    return Everything(
        when=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        day=date(1999, 12, 31),
        at=time(8, 15, 30, 5),
        id=UUID("12345678-1234-4234-8234-123456789abc"),
        amount=Decimal("1.10"),
        channel=Channel.PHONE,
        level=Level.HIGH,
        address=Address("1 Main St", "Zürich"),
        addresses=[Address("a", "b"), Address("c", "d")],
        pair=(7, "seven"),
        many=(Decimal("0.1"), Decimal("2E+3")),
        by_id={UUID(int=5): Address("x", "y")},
        by_level={Level.LOW: [1, 2]},
        by_number={10: "ten", 2: "two"},
        tags=frozenset({"b", "a"}),
        blob=b"\x00\xff",
        ratio=0.1,
        maybe=Address("m", "n"),
        either="text",
        kind="b",
        plain={"nested": [1, {"x": None}]},
    )


def test_every_supported_type_round_trips_exactly() -> None:
    codec = JsonCodec()
    codec.register(Everything)
    event_type, version, payload = codec.encode(everything())
    assert (event_type, version) == ("Everything", 1)
    assert isinstance(payload, bytes)
    decoded = codec.decode(event_type, version, payload)
    assert decoded == everything()
    assert isinstance(decoded, Everything)
    assert decoded.when.utcoffset() == timedelta(hours=-5)
    assert type(decoded.pair) is tuple
    assert type(decoded.addresses) is list
    assert str(decoded.amount) == "1.10"
    assert decoded.level is Level.HIGH


def test_payloads_are_compact_and_deterministic() -> None:
    codec = JsonCodec()
    codec.register(Everything)
    _, _, one = codec.encode(everything())
    reordered = everything()
    object.__setattr__(reordered, "by_number", {2: "two", 10: "ten"})
    object.__setattr__(reordered, "tags", frozenset({"a", "b"}))
    _, _, two = codec.encode(reordered)
    assert one == two
    assert b" " not in one.replace(b"1 Main St", b"")
    assert "Zürich".encode() in one  # UTF-8, not \u escapes
    assert json.loads(one)["amount"] == "1.10"


class Line(pydantic.BaseModel):
    sku: str
    price: Decimal
    at: datetime


class Shipped(msgspec.Struct, frozen=True):
    tracking: UUID
    at: datetime


@dataclass(frozen=True)
class Wrapped:
    line: Line


def test_pydantic_models_and_msgspec_structs() -> None:
    codec = JsonCodec()
    codec.register(Line)
    codec.register(Shipped)
    codec.register(Wrapped)
    at = datetime(2024, 1, 1, 12, tzinfo=UTC)
    for value in (
        Line(sku="tea", price=Decimal("1.50"), at=at),
        Shipped(UUID(int=9), at),
        Wrapped(Line(sku="x", price=Decimal("2"), at=at)),
    ):
        event_type, version, payload = codec.encode(value)
        assert codec.decode(event_type, version, payload) == value
    with pytest.raises(CodecError, match=r"Line v1: cannot encode Line: .*serialize unknown type"):
        codec.encode(Line.model_construct(sku="tea", price=object(), at=at))
    with pytest.raises(CodecError, match=r"Wrapped v1: field 'line': cannot encode Line"):
        codec.encode(Wrapped(Line.model_construct(sku="x", price=object(), at=at)))
    with pytest.raises(CodecError, match=r"Shipped v1: cannot encode Shipped: .*unsupported"):
        codec.encode(Shipped(object(), at))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"Line v1: .*does not fit Line"):
        codec.decode("Line", 1, b'{"sku":"tea"}')
    with pytest.raises(CodecError, match=r"Shipped v1: .*does not fit Shipped"):
        codec.decode("Shipped", 1, b'{"tracking":"nope","at":"2024-01-01T00:00:00Z"}')


@dataclass(frozen=True)
class RenamedV1:
    name: str


@dataclass(frozen=True)
class RenamedV2:
    full_name: str


@dataclass(frozen=True)
class RenamedV3:
    full_name: str
    channel: str


def test_upcasters_run_from_the_stored_version_to_the_newest() -> None:
    codec = JsonCodec()
    codec.register(RenamedV1, event_type="Renamed")
    codec.register(RenamedV3, event_type="Renamed", version=3)
    codec.upcast("Renamed", 1, lambda d: {"full_name": d["name"]})
    codec.upcast("Renamed", 2, lambda d: {**d, "channel": "web"})
    assert codec.encode(RenamedV3("Ada", "app")) == (
        "Renamed",
        3,
        b'{"channel":"app","full_name":"Ada"}',
    )
    assert codec.decode("Renamed", 1, b'{"name":"Ada"}') == RenamedV3("Ada", "web")
    assert codec.decode("Renamed", 2, b'{"full_name":"Bo"}') == RenamedV3("Bo", "web")
    assert codec.decode("Renamed", 3, b'{"full_name":"C","channel":"x"}') == RenamedV3("C", "x")


def test_without_an_upcaster_an_old_version_decodes_to_its_own_class() -> None:
    codec = JsonCodec()
    codec.register(RenamedV1, event_type="Renamed")
    codec.register(RenamedV2, event_type="Renamed", version=2)
    assert codec.decode("Renamed", 1, b'{"name":"Ada"}') == RenamedV1("Ada")


def test_decode_errors_name_type_and_version() -> None:
    codec = JsonCodec()
    codec.register(RenamedV2, event_type="Renamed", version=2)
    codec.upcast("Renamed", 1, lambda d: d["missing"])
    cases = [
        ("Nope", 1, b"{}", r"^Nope v1: unknown event type"),
        ("Renamed", 3, b"{}", r"^Renamed v3: unknown event version \(registered: \[2\]\)"),
        ("Renamed", 2, b"not json", r"^Renamed v2: the payload is not UTF-8 JSON"),
        ("Renamed", 2, b'{"full_name":1}', r"^Renamed v2: .*field 'full_name': expected a str"),
        ("Renamed", 2, b'{"full_name":"a","x":1}', r"^Renamed v2: .*unexpected field\(s\) 'x'"),
        ("Renamed", 2, b"{}", r"^Renamed v2: .*missing field\(s\) 'full_name'"),
        ("Renamed", 1, b"{}", r"^Renamed v1: the upcaster to v2 failed: KeyError"),
    ]
    for event_type, version, payload, message in cases:
        with pytest.raises(CodecError, match=message) as caught:
            codec.decode(event_type, version, payload)
        assert (caught.value.event_type, caught.value.event_version) == (event_type, version)
        assert isinstance(caught.value, ValueError | PupsourcingError)


def test_encode_errors_and_registration_rules() -> None:
    codec = JsonCodec()
    codec.register(OrderPlaced)
    with pytest.raises(CodecError, match="ItemAdded is not a registered event class"):
        codec.encode(ItemAdded("tea", Decimal(1)))
    with pytest.raises(CodecError, match=r"OrderPlaced v1: field 'customer': cannot encode"):
        codec.encode(OrderPlaced(object()))  # type: ignore[arg-type]
    codec.register(ItemAdded)
    with pytest.raises(CodecError, match="not a finite number"):
        codec.encode(ItemAdded("tea", Decimal(1), float("nan")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        codec.register(OrderPlaced, event_type="Other")
    with pytest.raises(ValueError, match="OrderPlaced v1 is already registered"):
        codec.register(Address, event_type="OrderPlaced")
    with pytest.raises(TypeError, match="not a dataclass"):
        codec.register(int)
    with pytest.raises(ValueError, match="version"):
        codec.register(OrderShipped, version=0)
    codec.upcast("X", 1, dict)
    with pytest.raises(ValueError, match="already registered"):
        codec.upcast("X", 1, dict)
    assert isinstance(codec, Codec)


def test_annotations_that_do_not_resolve_are_refused_at_registration() -> None:
    @dataclass
    class Hidden:
        x: int

    @dataclass
    class Local:
        hidden: Hidden  # a name only this function sees, as a string annotation

    codec = JsonCodec()
    with pytest.raises(TypeError, match=r"Local: its field annotations cannot be resolved"):
        codec.register(Local)
    with pytest.raises(CodecError, match="unknown event type"):
        codec.decode("Local", 1, b"{}")


def test_register_works_as_a_decorator() -> None:
    codec = JsonCodec()

    @codec.register
    @dataclass(frozen=True)
    class Decorated:
        value: int

    assert codec.encode(Decorated(3)) == ("Decorated", 1, b'{"value":3}')


def test_aggregate_records_applies_and_queues() -> None:
    order = Order("o-1")
    order.place("ada")
    assert order.version == 1
    assert order.pending_events == (OrderPlaced("ada"),)
    with pytest.raises(ValueError, match="already placed"):
        order.place("bob")
    assert order.version == 1
    assert len(order.pending_events) == 1
    assert order.snapshot_state() == {"customer": "ada", "lines": {}, "shipped": None}
    assert repr(order) == "<Order 'o-1' v1, 1 pending>"
    with pytest.raises(ValueError, match="aggregate_id"):
        Order("")


class Pack(enum.Enum):
    SMALL = (1, 2)
    PRICEY = Decimal("9.90")
    DATED = date(2024, 1, 1)


@dataclass(frozen=True)
class Packed:
    pack: Pack


def test_enums_whose_values_json_changes_round_trip() -> None:
    codec = JsonCodec()
    codec.register(Packed)
    for pack in Pack:
        value = Packed(pack)
        event_type, version, payload = codec.encode(value)
        assert codec.decode(event_type, version, payload) == value
    with pytest.raises(CodecError, match=r"field 'pack': '9.9' is not a Pack"):
        codec.decode("Packed", 1, b'{"pack":"9.9"}')


@dataclass(frozen=True)
class Roomy:
    line: Address


@dataclass(frozen=True)
class Either:
    when: datetime | date
    number: float | int
    place: Roomy | Address
    late: datetime | date | None = None


def test_union_fields_come_back_as_the_arm_they_went_in_as() -> None:
    codec = JsonCodec()
    codec.register(Either)
    for value in (
        Either(date(2024, 1, 1), 3, Address("a", "b"), date(2024, 1, 2)),
        Either(datetime(2024, 1, 1), 3.0, Roomy(Address("a", "b"))),
    ):
        event_type, version, payload = codec.encode(value)
        decoded = codec.decode(event_type, version, payload)
        assert decoded == value
        assert [type(getattr(decoded, f)) for f in ("when", "number", "place", "late")] == [
            type(getattr(value, f)) for f in ("when", "number", "place", "late")
        ]
    # A payload no arm writes exactly still decodes, with the first arm that fits.
    assert codec.decode(
        "Either", 1, b'{"when":"2024-01-01T00:00","number":2,"place":{"street":"a","city":"b"}}'
    ) == Either(datetime(2024, 1, 1), 2, Address("a", "b"))


class Point(NamedTuple):
    x: Decimal
    y: Decimal


@dataclass(frozen=True)
class Moved:
    to: Point
    path: list[Point]


def test_named_tuples_round_trip() -> None:
    codec = JsonCodec()
    codec.register(Moved)
    value = Moved(Point(Decimal("1.5"), Decimal("2")), [Point(Decimal(0), Decimal("0.10"))])
    event_type, version, payload = codec.encode(value)
    assert payload == b'{"path":[["0","0.10"]],"to":["1.5","2"]}'
    decoded = codec.decode(event_type, version, payload)
    assert decoded == value
    assert type(decoded.to) is Point
    with pytest.raises(CodecError, match=r"field 'to': expected 2 items, got 1"):
        codec.decode(event_type, version, b'{"path":[],"to":["1"]}')


@dataclass(frozen=True)
class Checked:
    """Checks its own fields, with whatever exception its author chose."""

    quantity: int

    def __post_init__(self) -> None:
        assert self.quantity != 0, "zero"
        if self.quantity < 0:
            raise KeyError("negative")


class CheckedStruct(msgspec.Struct):
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity < 0:
            raise LookupError("negative")


def test_a_class_refusing_the_payload_raises_codec_error_with_the_cause() -> None:
    codec = JsonCodec()
    codec.register(Checked)
    codec.register(CheckedStruct)
    cases = [
        ("Checked", b'{"quantity":0}', AssertionError, r"Checked rejected the value: .*zero"),
        ("Checked", b'{"quantity":-1}', KeyError, r"Checked rejected the value: .*negative"),
        ("CheckedStruct", b'{"quantity":-1}', LookupError, r"CheckedStruct rejected .*negative"),
    ]
    for event_type, payload, cause, message in cases:
        with pytest.raises(CodecError, match=rf"^{event_type} v1: .*{message}") as caught:
            codec.decode(event_type, 1, payload)
        assert type(caught.value.__cause__) is cause


class Measured(pydantic.BaseModel):
    ratio: float


class MeasuredStruct(msgspec.Struct):
    ratios: list[float]


@dataclass(frozen=True)
class Ratio:
    ratio: float
    extra: Any = None


def test_non_finite_floats_are_refused_both_ways() -> None:
    """NaN and Infinity are not JSON: jsonb, the relay's consumers and other
    languages cannot read them, so nothing writes or reads them."""
    codec = JsonCodec()
    codec.register(Measured)
    codec.register(MeasuredStruct)
    codec.register(Ratio)
    with pytest.raises(CodecError, match=r"^Measured v1: field 'ratio': nan is not a finite"):
        codec.encode(Measured(ratio=float("nan")))
    with pytest.raises(CodecError, match=r"^MeasuredStruct v1: field 'ratios\[1\]': inf is not"):
        codec.encode(MeasuredStruct([1.0, float("inf")]))
    with pytest.raises(CodecError, match=r"^Ratio v1: field 'ratio': -inf is not a finite"):
        codec.encode(Ratio(float("-inf")))
    for payload in (
        b'{"ratio":NaN}',
        b'{"ratio":Infinity}',
        b'{"ratio":-Infinity}',
        b'{"ratio":1e400}',
        b'{"ratio":1,"extra":[-1e999]}',
    ):
        with pytest.raises(CodecError, match=r"^Ratio v1: the payload is not standard JSON: "):
            codec.decode("Ratio", 1, payload)
    assert codec.decode("Ratio", 1, b'{"ratio":1e300}') == Ratio(1e300)


UserId = NewType("UserId", int)


class Mixed(enum.Enum):
    RED = "red"
    TWO = 2


@dataclass(frozen=True)
class Keyed:
    by_user: dict[UserId, str]
    by_rank: dict[Literal[1, 2], str]
    by_mixed: dict[Mixed, int]
    by_day: dict[date, Annotated[int, "count"]]
    counts: Counter[str]
    tree: Tree | None = None


@dataclass(frozen=True)
class Tree:
    name: str
    children: list[Tree] = field(default_factory=list)


def test_dict_keys_and_counters_come_back_as_declared() -> None:
    codec = JsonCodec()
    codec.register(Keyed)
    value = Keyed(
        {UserId(7): "ada"},
        {2: "second"},
        {Mixed.RED: 1, Mixed.TWO: 2},
        {date(2024, 1, 1): 3},
        Counter("abb"),
        Tree("root", [Tree("leaf")]),
    )
    event_type, version, payload = codec.encode(value)
    decoded = codec.decode(event_type, version, payload)
    assert decoded == value
    assert type(decoded.counts) is Counter
    assert [type(k) for k in decoded.by_user] == [int]
    assert set(decoded.by_mixed) == {Mixed.RED, Mixed.TWO}
    with pytest.raises(CodecError, match=r"field 'by_user': object key 'x': not an int"):
        codec.decode(event_type, version, payload.replace(b'"7"', b'"x"'))


@dataclass
class FloatKeys:
    by_ratio: dict[float, str]


@dataclass
class PairKeys:
    by_pair: list[dict[tuple[int, int], str]]


@dataclass
class Defaults:
    counts: defaultdict[str, int]


@dataclass
class Ordered:
    seen: OrderedDict[str, int] | None


@dataclass
class Queued:
    jobs: deque[int]


def test_types_that_would_not_come_back_are_refused_at_registration() -> None:
    """Refused before anything is written, naming the field."""
    codec = JsonCodec()
    cases = [
        (FloatKeys, r"field 'by_ratio': a float cannot be an object key"),
        (PairKeys, r"field 'by_pair': a tuple\[int, int\] cannot be an object key"),
        (Defaults, r"field 'counts': a defaultdict's default_factory is not stored"),
        (Ordered, r"field 'seen': an OrderedDict's order does not come back"),
        (Queued, r"field 'jobs': cannot decode the container type .*deque"),
    ]
    for cls, message in cases:
        with pytest.raises(TypeError, match=rf"^{cls.__qualname__}: {message}"):
            codec.register(cls)
        with pytest.raises(CodecError, match="unknown event type"):
            codec.decode(cls.__qualname__, 1, b"{}")


@dataclass
class Amount:
    value: str | Decimal


@dataclass
class Ids:
    ids: list[UUID | str]


@dataclass
class Stamp:
    at: datetime | str | None


@dataclass
class Blob:
    data: bytes | str


@dataclass
class Chan:
    channel: str | Channel


@dataclass
class Leveled:
    level: int | Level


@dataclass(frozen=True)
class Unambiguous:
    a: int | str
    b: Literal["auto"] | str
    c: datetime | date | UUID | Decimal
    d: float | int | bool | None
    e: Channel | Level | Address | list[int]


def test_unions_json_cannot_tell_apart_are_refused_at_registration() -> None:
    """``str | Decimal``: a Decimal is written as a string, and any string
    reads back as a str, so either arm would come back as the other."""
    codec = JsonCodec()
    cases = [
        (Amount, "value", "str and Decimal", "string"),
        (Ids, "ids", "str and UUID", "string"),
        (Stamp, "at", "str and datetime", "string"),
        (Blob, "data", "bytes and str", "string"),
        (Chan, "channel", "str and Channel", "string"),
        (Leveled, "level", "int and Level", "int"),
    ]
    for cls, name, arms, kind in cases:
        message = rf"^{cls.__qualname__}: field '{name}': a union of {arms} cannot be told apart"
        with pytest.raises(TypeError, match=message + rf".* any {kind} reads as"):
            codec.register(cls)
    codec.register(Unambiguous)
    for value in (
        Unambiguous(1, "auto", datetime(2024, 1, 1), 1.0, Channel.WEB),
        Unambiguous("1", "manual", UUID(int=3), True, Level.LOW),
        Unambiguous(2, "x", Decimal("1.5"), None, Address("a", "b")),
        Unambiguous(3, "y", date(2024, 1, 1), 2, [1]),
    ):
        decoded = codec.decode(*codec.encode(value))
        assert decoded == value
        assert [type(getattr(decoded, f)) for f in "abcde"] == [
            type(getattr(value, f)) for f in "abcde"
        ]


@dataclass(frozen=True)
class GoShaped:
    """An event a Go service also writes: its nil slices, maps and []byte
    marshal as ``null``."""

    tags: list[str]
    pair: tuple[int, ...]
    seen: frozenset[str]
    counts: dict[str, int]
    blob: bytes
    note: list[str] | None = None


def test_go_nulls_read_as_empty_containers_and_are_never_written() -> None:
    codec = JsonCodec()
    codec.register(GoShaped)
    payload = json.dumps(
        {"tags": None, "pair": None, "seen": None, "counts": None, "blob": None, "note": None}
    ).encode()
    assert codec.decode("GoShaped", 1, payload) == GoShaped([], (), frozenset(), {}, b"", None)
    # An optional container keeps null as None; an empty container is
    # written as one, never as null.
    written = codec.encode(GoShaped([], (), frozenset(), {}, b""))[2]
    assert json.loads(written) == {
        "tags": [],
        "pair": [],
        "seen": [],
        "counts": {},
        "blob": "",
        "note": None,
    }
    # A scalar field still refuses null.
    codec.register(OrderPlaced)
    with pytest.raises(CodecError, match="customer"):
        codec.decode("OrderPlaced", 1, b'{"customer": null}')
