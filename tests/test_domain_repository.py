"""The domain layer's Repository (and AsyncRepository) on every database:
round trips, optimistic concurrency, snapshots, and bad input that writes
nothing."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from conftest import Backend
from domain_model import (
    Address,
    Channel,
    ItemAdded,
    NotAnEvent,
    OddState,
    Order,
    OrderPlaced,
    OrderShipped,
    OrderV2Snapshots,
    RichState,
    Status,
    Unstorable,
    codec,
)
from helpers import query
from pupsourcing import Event, ExpectedVersion, InvalidEventError, OptimisticConcurrencyError
from pupsourcing.adapters.sqlite import AsyncSQLiteStore, SQLiteStore
from pupsourcing.aio import AsyncRepository
from pupsourcing.domain import Aggregate, AggregateNotFoundError, CodecError, Repository
from pupsourcing.store.snapshots import Snapshot

pytestmark = pytest.mark.both_apis


class Blocking:
    """An AsyncRepository behind the blocking Repository's methods (run on
    the async backend's event loop), so one test covers both APIs."""

    def __init__(self, backend: Backend, repo: AsyncRepository[Any]) -> None:
        self.loop = backend.store.loop
        self.repo = repo

    def save(self, tx: Any, aggregate: Any, **kwargs: Any) -> Any:
        return self.loop.call(self.repo.save(tx.raw, aggregate, **kwargs))

    def load(self, tx: Any, aggregate_id: str, **kwargs: Any) -> Any:
        return self.loop.call(self.repo.load(tx.raw, aggregate_id, **kwargs))


def repository(backend: Backend, cls: type[Any] = Order, **kwargs: Any) -> Any:
    if backend.api == "async":
        return Blocking(backend, AsyncRepository(backend.store.raw, cls, codec(), **kwargs))
    return Repository(backend.store, cls, codec(), **kwargs)


def snapshot_versions(backend: Backend, aggregate_id: str) -> list[tuple[int, int]]:
    conn = backend.connect()
    try:
        rows = query(
            conn,
            "SELECT aggregate_version, schema_version FROM aggregate_snapshots "
            f"WHERE aggregate_id = '{aggregate_id}' ORDER BY aggregate_version",
        )
        return [(int(v), int(s)) for v, s in rows]
    finally:
        conn.close()


def shipped_fields(**changes: Any) -> tuple[Any, ...]:
    fields = {
        "at": datetime(2024, 5, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        "tracking": uuid.UUID("00000000-0000-4000-8000-000000000042"),
        "address": Address("1 Main St", "Springfield"),
        "channel": Channel.PHONE,
        "tags": ("fragile", "gift"),
    }
    return tuple({**fields, **changes}.values())


def shipped() -> OrderShipped:
    return OrderShipped(*shipped_fields())


def test_save_then_load_round_trips_state_and_versions(backend: Backend) -> None:
    repo = repository(backend)
    conn = backend.connection()
    order = Order("order-1")
    order.place("ada")
    order.add("tea", "3.10", 2)
    assert order.version == 2
    assert len(order.pending_events) == 2
    result = repo.save(
        conn, order, metadata={"user": "u1"}, causation_id="cmd-1", correlation_id="req-9"
    )
    conn.commit()
    assert (result.from_version, result.to_version) == (0, 2)
    assert order.pending_events == ()
    assert order.version == 2
    assert repo.save(conn, order) is None  # nothing pending

    loaded = repo.load(conn, "order-1")
    assert (loaded.id, loaded.version, loaded.customer) == ("order-1", 2, "ada")
    assert loaded.lines == {"tea": (Decimal("3.10"), 2)}
    stored = backend.store.read_aggregate_stream(conn, "Sales", "Order", "order-1")
    assert [e.event_type for e in stored] == ["OrderPlaced", "ItemAdded"]
    assert json.loads(stored.events[0].metadata) == {"user": "u1"}
    assert stored.events[1].causation_id == "cmd-1"
    assert stored.events[1].correlation_id == "req-9"

    loaded.record(shipped())
    repo.save(conn, loaded)
    conn.commit()
    again = repo.load(conn, "order-1")
    assert again.shipped == shipped()
    assert again.version == 3
    assert again.shipped.at.utcoffset() == timedelta(hours=2)
    past = repo.load(conn, "order-1", at_version=1)
    assert (past.version, past.customer, past.lines) == (1, "ada", {})


def test_loading_an_aggregate_without_events_raises_not_found(backend: Backend) -> None:
    repo = repository(backend)
    conn = backend.connection()
    with pytest.raises(AggregateNotFoundError, match="Sales/Order/missing") as caught:
        repo.load(conn, "missing")
    assert caught.value.aggregate_id == "missing"
    assert isinstance(caught.value, LookupError)


def test_a_lost_race_raises_and_keeps_the_losers_pending_events(backend: Backend) -> None:
    repo = repository(backend)
    first, second = backend.connection(), backend.connection()
    order = Order("order-2")
    order.place("ada")
    repo.save(first, order)
    first.commit()

    mine, theirs = repo.load(first, "order-2"), repo.load(second, "order-2")
    first.rollback()
    second.rollback()
    mine.add("tea", "1.00")
    theirs.add("cake", "2.50")
    repo.save(first, mine)
    first.commit()
    with pytest.raises(OptimisticConcurrencyError) as caught:
        repo.save(second, theirs)
    second.rollback()
    assert caught.value.aggregate_id == "order-2"
    assert len(theirs.pending_events) == 1
    assert theirs.version == 2
    assert backend.count_events() == 2

    # The retry: load again, run the command again, save.
    retry = repo.load(second, "order-2")
    retry.add("cake", "2.50")
    repo.save(second, retry)
    second.commit()
    assert repo.load(first, "order-2").lines.keys() == {"tea", "cake"}


def test_an_aggregate_whose_save_was_rolled_back_cannot_save_over_another_writer(
    backend: Backend,
) -> None:
    """After its save's transaction rolled back, the aggregate holds an event
    the store does not; another writer's event at that version must not let
    its next save through (nor its snapshot of a state that never was)."""
    repo = repository(backend, snapshot_every=3)
    conn = backend.connection()
    order = Order("order-16")
    order.place("ada")
    repo.save(conn, order)
    conn.commit()
    cached = repo.load(conn, "order-16")
    cached.add("tea", "1.00")
    repo.save(conn, cached)
    conn.rollback()  # the save is undone; `cached` still holds tea at version 2

    other = repo.load(conn, "order-16")
    other.add("cake", "2.00")
    repo.save(conn, other)
    conn.commit()

    cached.add("jam", "3.00")  # version 3: a snapshot would be due
    with pytest.raises(OptimisticConcurrencyError, match="rolled back") as caught:
        repo.save(conn, cached)
    conn.rollback()
    assert caught.value.aggregate_id == "order-16"
    assert len(cached.pending_events) == 1
    assert backend.count_events() == 2
    assert snapshot_versions(backend, "order-16") == []
    assert set(repo.load(conn, "order-16").lines) == {"cake"}

    # An aggregate saved (and committed) before saves again as usual.
    again = repo.load(conn, "order-16")
    again.add("jam", "3.00")
    repo.save(conn, again)
    conn.commit()
    again.add("scone", "1.00")
    repo.save(conn, again)  # also in the same transaction as its last save
    again.add("pie", "1.00")
    repo.save(conn, again)
    conn.commit()
    assert set(repo.load(conn, "order-16").lines) == {"cake", "jam", "scone", "pie"}


def test_saving_again_after_a_rolled_back_save_does_not_lose_its_events(
    backend: Backend,
) -> None:
    """A retry that saves the same object again after its transaction rolled
    back has nothing pending (the first save cleared it): it must not be
    told that all is saved while the store holds none of those events."""
    repo = repository(backend)
    conn = backend.connection()
    fresh = Order("order-18")
    fresh.place("ada")
    repo.save(conn, fresh)
    conn.rollback()  # e.g. a later statement of the request failed
    with pytest.raises(OptimisticConcurrencyError, match=r"did not commit.*load it again"):
        repo.save(conn, fresh)  # the retry
    conn.rollback()
    assert backend.count_events() == 0

    order = Order("order-19")
    order.place("ada")
    repo.save(conn, order)
    conn.commit()
    assert repo.save(conn, order) is None  # committed: nothing to do
    order.add("tea", "1.00")
    repo.save(conn, order)
    assert repo.save(conn, order) is None  # saved in this open transaction
    conn.rollback()
    with pytest.raises(OptimisticConcurrencyError, match=r"version 2.*did not commit") as caught:
        repo.save(conn, order)
    conn.rollback()
    assert (caught.value.aggregate_id, caught.value.expected) == (
        "order-19",
        ExpectedVersion.exact(2),
    )
    assert backend.count_events() == 1
    assert repo.load(conn, "order-19").lines == {}


def test_two_new_aggregates_with_one_id_conflict(backend: Backend) -> None:
    repo = repository(backend)
    conn = backend.connection()
    a, b = Order("order-3"), Order("order-3")
    a.place("ada")
    b.place("bob")
    repo.save(conn, a)
    conn.commit()
    with pytest.raises(OptimisticConcurrencyError):
        repo.save(conn, b)
    conn.rollback()
    assert b.pending_events
    assert repo.load(conn, "order-3").customer == "ada"


def test_an_event_the_codec_does_not_know_writes_nothing(backend: Backend) -> None:
    repo = repository(backend)
    conn = backend.connection()
    order = Order("order-4")
    order.place("ada")
    order.record(NotAnEvent())
    with pytest.raises(CodecError, match=r"pending event 1 \(NotAnEvent\).*not a registered"):
        repo.save(conn, order)
    order2 = Order("order-4c")
    order2.record(OrderPlaced(customer=object()))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"OrderPlaced v1") as raised:
        repo.save(conn, order2)
    assert (raised.value.event_type, raised.value.event_version) == ("OrderPlaced", 1)
    order2 = Order("order-4b")
    order2.record(Unstorable("x"))
    with pytest.raises(CodecError, match="Unstorable"):
        repo.save(conn, order2)
    conn.commit()
    assert backend.count_events() == 0
    assert len(order.pending_events) == 2


def nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def holding_itself() -> list[Any]:
    cycle: list[Any] = []
    cycle.append(cycle)
    return cycle


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"user": "\ud800"}, r"'user': .*lone surrogate"),
        ({"tags": ["ok", "x\udfff"]}, r"'tags\[1\]': .*lone surrogate"),
        ({"\udc00": "key"}, r"text with a lone surrogate"),
        ({"x": object()}, r"is not JSON-encodable.*object"),
        ({"n": float("nan")}, r"is not JSON-encodable.*Out of range float"),
        ({(1, 2): "tuple key"}, r"is not JSON-encodable.*keys must be"),
        ({"deep": nested(100_000)}, r"is nested too deeply"),
        ({"self": holding_itself()}, r"is not JSON-encodable.*Circular"),
        (["not", "a", "mapping"], r"must be a mapping, bytes or None, got list"),
        ("{}", r"must be a mapping, bytes or None, got str"),
        (b"\xff", r"is not valid UTF-8"),
        (b"{nope", r"is not valid JSON"),
    ],
)
def test_metadata_that_cannot_be_stored_raises_invalid_event_error_and_writes_nothing(
    backend: Backend, metadata: Any, problem: str
) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-20")
    order.place("ada")
    with pytest.raises(InvalidEventError, match=r"^event 0: metadata: " + problem) as caught:
        repo.save(conn, order, metadata=metadata)
    conn.commit()
    assert (caught.value.index, caught.value.field) == (0, "metadata")
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-20") == []
    assert len(order.pending_events) == 1


def test_equal_metadata_is_stored_as_equal_bytes(backend: Backend) -> None:
    """Like payloads and ``Event.json``: keys sorted, so bytes compare as the
    mappings do (a consumer deduplicating by metadata, say)."""
    repo = repository(backend)
    conn = backend.connection()
    for aggregate_id, metadata in [
        ("order-30", {"user": "u1", "tenant": {"region": "eu", "id": 7}}),
        ("order-31", {"tenant": {"id": 7, "region": "eu"}, "user": "u1"}),
    ]:
        order = Order(aggregate_id)
        order.place("ada")
        repo.save(conn, order, metadata=metadata)
    conn.commit()
    stored = [
        backend.store.read_aggregate_stream(conn, "Sales", "Order", i).events[0].metadata
        for i in ("order-30", "order-31")
    ]
    assert stored == [b'{"tenant":{"id":7,"region":"eu"},"user":"u1"}'] * 2


@pytest.mark.parametrize(
    ("ids", "field", "problem"),
    [
        ({"causation_id": "\ud800"}, "causation_id", "not valid UTF-8"),
        ({"correlation_id": "a\x00b"}, "correlation_id", "NUL"),
        ({"causation_id": uuid.UUID(int=7)}, "causation_id", "must be str or None, got UUID"),
        ({"correlation_id": 42}, "correlation_id", "must be str or None, got int"),
    ],
)
def test_causation_and_correlation_ids_that_cannot_be_stored_write_nothing(
    backend: Backend, ids: dict[str, Any], field: str, problem: str
) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-21")
    order.place("ada")
    order.add("tea", "1.00")
    with pytest.raises(InvalidEventError, match=problem) as caught:
        repo.save(conn, order, **ids)
    conn.commit()
    assert (caught.value.index, caught.value.field) == (0, field)
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-21") == []


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (OrderPlaced("\ud800"), r"field 'customer': .*lone surrogate"),
        (OrderShipped(*shipped_fields(tags=("ok", "\udfff"))), r"field 'tags\[1\]': .*surrogate"),
        (
            OrderShipped(*shipped_fields(address=Address("\ud83d", "x"))),
            r"field 'address.street': .*surrogate",
        ),
        (OrderPlaced(nested(100_000)), r"nested too deeply"),  # type: ignore[arg-type]
        (OrderPlaced(holding_itself()), r"nested too deeply"),  # type: ignore[arg-type]
    ],
)
def test_a_payload_the_codec_cannot_encode_names_the_field_and_writes_nothing(
    backend: Backend, event: object, problem: str
) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-22")
    order.place("ada")
    order.record(event)
    with pytest.raises(CodecError, match=r"pending event 1 .*" + problem):
        repo.save(conn, order)
    conn.commit()
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-22") == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("\ud800", r"'note': .*lone surrogate"),
        ({"k": ["x", "\udfff"]}, r"'note.k\[1\]': .*lone surrogate"),
        (holding_itself(), r"'note'.*nested too deeply"),
    ],
)
def test_a_snapshot_state_the_codec_cannot_encode_names_the_attribute(
    backend: Backend, value: object, problem: str
) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-23")
    order.place("ada")
    order.note = value  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match=r"Order.snapshot_state\(\): cannot store .*" + problem):
        repo.save(conn, order)
    conn.commit()
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-23") == []


def test_a_snapshot_state_that_is_not_json_writes_nothing(backend: Backend) -> None:
    repo = repository(backend, OddState, snapshot_every=1)
    conn = backend.connection()
    order = OddState("order-5")
    order.place("ada")
    with pytest.raises(CodecError, match=r"OddState.snapshot_state\(\).*'lock'.*object"):
        repo.save(conn, order)
    conn.commit()
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-5") == []


def test_an_aggregate_class_without_its_names_is_refused(backend: Backend) -> None:
    class Nameless(Aggregate):
        aggregate_type = "Thing"

        def apply(self, event: object) -> None:
            pass

    with pytest.raises(TypeError, match=r"Nameless.bounded_context: .*needs the class attribute"):
        Repository(backend.store, Nameless, codec())
    with pytest.raises(TypeError, match="bounded_context"):
        Nameless("x")
    assert backend.count_events() == 0


class GiftOrder(Order):
    """A subclass naming a stream of its own."""

    aggregate_type = "GiftOrder"


def test_a_subclass_naming_another_stream_or_snapshot_schema_is_refused(
    backend: Backend,
) -> None:
    """The repository writes under its own class's names and schema: a
    GiftOrder saved by an Order repository would land in the Order stream,
    where a GiftOrder repository never finds it, and a snapshot of
    OrderV2Snapshots's state would be tagged with Order's schema."""
    conn = backend.connection()
    for cls, snapshot_every, field in [
        (GiftOrder, None, "aggregate_type 'GiftOrder', not 'Order'"),
        (OrderV2Snapshots, 1, "snapshot_schema 2, not 1"),
    ]:
        order = cls("order-32")
        order.place("ada")
        with pytest.raises(TypeError, match=rf"^{cls.__name__} has {field}: save it with a "):
            repository(backend, snapshot_every=snapshot_every).save(conn, order)
        assert len(order.pending_events) == 1
    conn.commit()
    assert backend.count_events() == 0
    assert snapshot_versions(backend, "order-32") == []
    # A subclass with the same names (and schema) is saved as its class.
    order = OrderWithTotal("order-32")
    order.place("ada")
    repository(backend, snapshot_every=1).save(conn, order)
    repository(backend).save(conn, OrderV2Snapshots("order-33"))  # nothing pending
    conn.commit()
    assert snapshot_versions(backend, "order-32") == [(1, 1)]


def test_snapshots_are_taken_every_n_and_loading_starts_from_them(backend: Backend) -> None:
    repo = repository(backend, snapshot_every=2)
    conn = backend.connection()
    order = Order("order-6")
    order.place("ada")
    repo.save(conn, order)  # version 1: no snapshot yet
    assert snapshot_versions(backend, "order-6") == []
    order.add("tea", "1.00")
    order.add("cake", "2.00")
    repo.save(conn, order)  # 1 -> 3 crosses 2: a snapshot at 3
    order.add("jam", "3.00")
    repo.save(conn, order)  # 3 -> 4 crosses 4
    order.record(shipped())
    repo.save(conn, order)
    conn.commit()
    assert snapshot_versions(backend, "order-6") == [(3, 1), (4, 1)]

    loaded = repo.load(conn, "order-6")
    assert loaded._applied == 1  # only the event after the snapshot at 4
    assert loaded.version == 5
    assert loaded.shipped == shipped()
    assert loaded.lines == order.lines
    assert loaded.customer == "ada"

    early = repo.load(conn, "order-6", at_version=3)
    assert (early._applied, early.version, set(early.lines)) == (0, 3, {"tea", "cake"})
    first = repo.load(conn, "order-6", at_version=2)
    assert (first._applied, first.version) == (2, 2)

    # A new snapshot layout ignores the old snapshots and rebuilds from events.
    newer = repository(backend, OrderV2Snapshots, snapshot_every=2)
    rebuilt = newer.load(conn, "order-6")
    assert rebuilt._applied == 5
    assert rebuilt.lines == order.lines

    # Without snapshot_every the snapshots table is not used at all.
    plain = repository(backend).load(conn, "order-6")
    assert plain._applied == 5


def test_snapshot_state_round_trips_rich_values(backend: Backend) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-7")
    order.place("ada")
    ids = frozenset({uuid.UUID(int=1), uuid.UUID(int=2)})
    extra = {
        "rich": RichState(datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), ids),
        "counts": {1: "one", (2, 3): {"x"}},
        "channel": Channel.WEB,
        "money": Decimal("10.50"),
        "$odd": ["keys", "too"],
    }
    order.notes = extra  # type: ignore[attr-defined]
    repo.save(conn, order)
    conn.commit()
    loaded = repo.load(conn, "order-7")
    assert loaded._applied == 0, "state came from the snapshot"
    assert loaded.notes == extra
    assert type(loaded.notes["rich"].ids) is frozenset
    assert loaded.notes["rich"].when.tzinfo is not None


def test_snapshot_state_keeps_str_enums(backend: Backend) -> None:
    repo = repository(backend, snapshot_every=1)
    conn = backend.connection()
    order = Order("order-10")
    order.place("ada")
    order.status = Status.OPEN  # type: ignore[attr-defined]
    order.by_status = {Status.CLOSED: [Status.OPEN]}  # type: ignore[attr-defined]
    repo.save(conn, order)
    loaded = repo.load(conn, "order-10")
    assert loaded._applied == 0, "state came from the snapshot"
    assert loaded.status is Status.OPEN
    assert loaded.by_status == {Status.CLOSED: [Status.OPEN]}
    assert [type(k) for k in loaded.by_status] == [Status]


def test_a_stored_event_the_codec_cannot_read_names_where_it_is(backend: Backend) -> None:
    conn = backend.connection()
    backend.store.append(
        conn,
        ExpectedVersion.no_stream(),
        [
            Event("Sales", "Order", "order-8", "OrderPlaced", b'{"customer":"ada"}'),
            Event("Sales", "Order", "order-8", "Refunded", b"{}", event_version=3),
        ],
    )
    conn.commit()
    with pytest.raises(
        CodecError, match=r"Sales/Order/order-8 version 2 .*Refunded v3: unknown"
    ) as raised:
        repository(backend).load(conn, "order-8")
    assert (raised.value.event_type, raised.value.event_version) == ("Refunded", 3)


class HandWrittenCodec:
    """A codec as users write one: the class's constructor takes the payload."""

    classes: ClassVar[dict[str, type]] = {"OrderPlaced": OrderPlaced, "ItemAdded": ItemAdded}

    def encode(self, event: object) -> tuple[str, int, bytes]:
        return type(event).__name__, 1, json.dumps(vars(event), default=str).encode()

    def decode(self, event_type: str, event_version: int, payload: bytes) -> object:
        return self.classes[event_type](**json.loads(payload))


def test_a_payload_a_hand_written_codec_cannot_fit_names_where_it_is(backend: Backend) -> None:
    """A constructor refusing the payload raises TypeError: the load names the
    event, as for JsonCodec's own errors (and as save does for encode)."""
    conn = backend.connection()
    backend.store.append(
        conn,
        ExpectedVersion.no_stream(),
        [
            Event("Sales", "Order", "order-34", "OrderPlaced", b'{"customer":"ada"}'),
            Event("Sales", "Order", "order-34", "OrderPlaced", b'{"name":"ada"}'),
        ],
    )
    conn.commit()
    store = backend.store.raw if backend.api == "async" else backend.store
    repo: Any = (
        Blocking(backend, AsyncRepository(store, Order, HandWrittenCodec()))
        if backend.api == "async"
        else Repository(store, Order, HandWrittenCodec())
    )
    with pytest.raises(
        CodecError, match=r"^Sales/Order/order-34 version 2 \(global position \d+\): .*'name'"
    ) as raised:
        repo.load(conn, "order-34")
    assert (raised.value.event_type, raised.value.event_version) == ("OrderPlaced", 1)
    assert isinstance(raised.value.__cause__, TypeError)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 20_000 + b"]" * 20_000,  # MySQL's payload column holds 64 KiB
        b'{"customer":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b'{"customer":"ada","x":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
    ],
    ids=["array", "field", "object"],
)
def test_a_stored_payload_nested_too_deeply_is_a_codec_error(
    backend: Backend, payload: bytes
) -> None:
    """Another writer's payload (the store takes any bytes) must not stop a
    load with a bare RecursionError."""
    conn = backend.connection()
    backend.store.append(
        conn,
        ExpectedVersion.no_stream(),
        [
            Event("Sales", "Order", "order-24", "OrderPlaced", b'{"customer":"ada"}'),
            Event("Sales", "Order", "order-24", "OrderPlaced", payload),
        ],
    )
    conn.commit()
    with pytest.raises(
        CodecError, match=r"Sales/Order/order-24 version 2 .*OrderPlaced v1: .*nested too deeply"
    ):
        repository(backend).load(conn, "order-24")


class FussyOrder(Order):
    """Its apply fails for an event that was stored (it must not)."""

    def apply(self, event: object) -> None:
        if isinstance(event, ItemAdded) and event.sku == "bad":
            raise KeyError(event.sku)
        super().apply(event)


def test_an_apply_failing_on_a_stored_event_says_which(backend: Backend) -> None:
    repo = repository(backend)
    conn = backend.connection()
    order = Order("order-17")
    order.place("ada")
    order.add("bad", "1.00")
    repo.save(conn, order)
    conn.commit()
    position = (
        backend.store.read_aggregate_stream(conn, "Sales", "Order", "order-17")
        .events[1]
        .global_position
    )
    with pytest.raises(KeyError) as caught:  # the exception apply raised, as it was
        repository(backend, FussyOrder).load(conn, "order-17")
    assert caught.value.args == ("bad",)
    assert caught.value.__notes__ == [
        f"while applying Sales/Order/order-17 version 2 (ItemAdded v1, global position {position})"
    ]


def test_a_blocking_repository_refuses_an_asyncio_store() -> None:
    async_store = AsyncSQLiteStore()
    with pytest.raises(TypeError, match=r"asyncio store: use pupsourcing.aio.AsyncRepository"):
        Repository(async_store, Order, codec())
    AsyncRepository(async_store, Order, codec())  # the twin that awaits it


def test_an_asyncio_repository_refuses_a_blocking_store() -> None:
    """Else its save runs the blocking append, then fails to await the
    result: the events sit in the caller's transaction, still pending."""
    with pytest.raises(TypeError, match=r"blocking store: use pupsourcing.domain.Repository"):
        AsyncRepository(SQLiteStore(), Order, codec())
    Repository(SQLiteStore(), Order, codec())


TRAPPED: list[dict[str, Any]] = []


def trap(**kwargs: Any) -> str:
    """Not a class: a snapshot that names it must not get it called."""
    TRAPPED.append(kwargs)
    return "trapped"


def test_a_snapshot_naming_a_function_is_ignored_not_called(backend: Backend) -> None:
    repo = repository(backend, snapshot_every=10)
    conn = backend.connection()
    order = Order("order-9")
    order.place("ada")
    repo.save(conn, order)
    for tag, inner in [
        ("$dataclass", {"fields": {"x": 1}}),
        ("$enum", {"value": 1}),
        ("$model", {"data": {}}),
    ]:
        state = {"$state": {"customer": {tag: f"{__name__}:trap", **inner}}}
        backend.store.save_snapshot(
            conn, Snapshot("Sales", "Order", "order-9", 1, 1, json.dumps(state).encode())
        )
        loaded = repo.load(conn, "order-9")
        assert (loaded.customer, loaded._applied) == ("ada", 1), "rebuilt from the events"
    assert TRAPPED == []


def test_a_snapshot_naming_a_module_not_imported_is_ignored_not_imported(
    backend: Backend,
) -> None:
    """Importing a module runs its code: ``this`` prints, ``antigravity``
    opens a browser."""
    assert "this" not in sys.modules
    repo = repository(backend, snapshot_every=10)
    conn = backend.connection()
    order = Order("order-10")
    order.place("ada")
    repo.save(conn, order)
    state = {"$state": {"customer": {"$enum": "this:Zen", "value": 1}}}
    backend.store.save_snapshot(
        conn, Snapshot("Sales", "Order", "order-10", 1, 1, json.dumps(state).encode())
    )
    loaded = repo.load(conn, "order-10")
    assert (loaded.customer, loaded._applied) == ("ada", 1), "rebuilt from the events"
    assert "this" not in sys.modules


def test_a_snapshot_that_is_not_standard_json_is_ignored(backend: Backend) -> None:
    """The repository never writes NaN or Infinity (nor reads them back)."""
    repo = repository(backend, snapshot_every=10)
    conn = backend.connection()
    order = Order("order-14")
    order.place("ada")
    repo.save(conn, order)
    for number in (b"NaN", b"-Infinity", b"1e999"):
        state = b'{"$state":{"customer":"eve","lines":{},"shipped":null,"n":%s}}' % number
        backend.store.save_snapshot(conn, Snapshot("Sales", "Order", "order-14", 1, 1, state))
        loaded = repo.load(conn, "order-14")
        assert (loaded.customer, loaded._applied) == ("ada", 1), "rebuilt from the events"


def test_a_snapshot_beyond_the_stored_events_is_ignored(backend: Backend) -> None:
    repo = repository(backend, snapshot_every=2)
    conn = backend.connection()
    order = Order("order-11")
    order.place("ada")
    order.add("tea", "1.00")
    repo.save(conn, order)  # a snapshot at 2
    conn.commit()
    bogus = b'{"$state":{"customer":"eve","lines":{},"shipped":null}}'
    for aggregate_id in ("order-11", "order-12"):  # beyond its events; without any
        backend.store.save_snapshot(conn, Snapshot("Sales", "Order", aggregate_id, 5, 1, bogus))
    conn.commit()

    loaded = repo.load(conn, "order-11")
    assert (loaded.version, loaded.customer, loaded._applied) == (2, "ada", 2), "from events"
    loaded.add("cake", "2.00")
    repo.save(conn, loaded)  # expects version 2, as stored
    assert repo.load(conn, "order-11", at_version=2)._applied == 0, "the good snapshot is used"
    with pytest.raises(AggregateNotFoundError):
        repo.load(conn, "order-12")


class StrictOrder(Order):
    """Restores only a state of the shape it expects (a renamed field made
    without a new ``snapshot_schema``, say, raises here)."""

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        self.customer = state["customer_name"]


def test_a_snapshot_restore_snapshot_refuses_is_ignored(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    repo = repository(backend, StrictOrder, snapshot_every=2)
    conn = backend.connection()
    order = StrictOrder("order-13")
    order.place("ada")
    order.add("tea", "1.00")
    repo.save(conn, order)  # a snapshot at 2, of the default state's shape
    loaded = repo.load(conn, "order-13")
    assert (loaded.version, loaded.customer, loaded._applied) == (2, "ada", 2), "from events"
    assert loaded.lines == {"tea": (Decimal("1.00"), 1)}
    assert "ignoring the snapshot of Sales/Order/order-13 at version 2: KeyError" in caplog.text


class OrderWithTotal(Order):
    """Order with a new attribute, and (by mistake) the same snapshot_schema."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = Decimal(0)

    def apply(self, event: object) -> None:
        super().apply(event)
        if isinstance(event, ItemAdded):
            self.total += event.price * event.quantity


def test_a_snapshot_without_an_attribute_the_class_now_has_is_ignored(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Restoring it would leave ``total`` at its initial value, silently."""
    conn = backend.connection()
    order = Order("order-15")
    order.place("ada")
    order.add("tea", "1.50", 2)
    repository(backend, snapshot_every=2).save(conn, order)  # a snapshot at 2, without total
    loaded = repository(backend, OrderWithTotal, snapshot_every=2).load(conn, "order-15")
    assert (loaded.total, loaded._applied) == (Decimal("3.00"), 2), "rebuilt from the events"
    assert "order-15 at version 2: ValueError(\"the snapshot has no 'total'" in caplog.text
    # Extra keys are kept: apply may set attributes __init__ does not.
    order.gift = True  # type: ignore[attr-defined]
    order.add("cake", "1.00")
    order.add("jam", "1.00")
    repository(backend, snapshot_every=2).save(conn, order)  # a snapshot at 4, with gift
    loaded = repository(backend, snapshot_every=2).load(conn, "order-15")
    assert (loaded.gift, loaded._applied) == (True, 0), "restored from the snapshot"


class CountingReads:
    """The store, recording how many events each stream read returned."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def read_aggregate_stream(self, tx: Any, *args: Any) -> Any:
        read = self.store.read_aggregate_stream(tx, *args)
        if hasattr(read, "__await__"):

            async def counted() -> Any:
                stream = await read
                self.reads.append(len(stream))
                return stream

            return counted()
        self.reads.append(len(read))
        return read


def counting_repository(backend: Backend, snapshot_every: int | None) -> tuple[Any, CountingReads]:
    counting = CountingReads(backend.store.raw if backend.api == "async" else backend.store)
    if backend.api == "async":
        repo = AsyncRepository(counting, Order, codec(), snapshot_every=snapshot_every)
        return Blocking(backend, repo), counting
    return Repository(counting, Order, codec(), snapshot_every=snapshot_every), counting


def test_a_long_stream_is_loaded_a_page_at_a_time(backend: Backend) -> None:
    """Loading holds 1000 stored events at a time, not the whole stream."""
    conn = backend.connection()
    events = [Event("Sales", "Order", "long", "OrderPlaced", b'{"customer":"ada"}')]
    events += [
        Event("Sales", "Order", "long", "ItemAdded", b'{"price":"1","sku":"s%d"}' % i)
        for i in range(2600)
    ]
    backend.store.append(conn, ExpectedVersion.no_stream(), events)
    conn.commit()
    for every in (None, 1000):
        repo, counting = counting_repository(backend, every)
        order = repo.load(conn, "long")
        assert (order.version, len(order.lines), order._applied) == (2601, 2600, 2601)
        assert counting.reads == [1000, 1000, 601]
        counting.reads.clear()
        past = repo.load(conn, "long", at_version=2000)
        assert (past.version, len(past.lines), counting.reads) == (2000, 1999, [1000, 1000])
        counting.reads.clear()
        assert repo.load(conn, "long", at_version=1500).version == 1500
        assert counting.reads == [1000, 500]

    # With a snapshot, from the snapshot's version on (its event is read again).
    repo, counting = counting_repository(backend, 1301)
    order = repo.load(conn, "long")
    order.add("last", "1.00")
    repo.save(conn, order)  # 2601 -> 2602 crosses 2 * 1301: a snapshot at 2602
    order.add("after", "1.00")
    repo.save(conn, order)
    conn.commit()
    counting.reads.clear()
    order = repo.load(conn, "long")
    assert (order.version, order._applied, counting.reads) == (2603, 1, [2])
