"""Bad input: a clear InvalidEventError naming event index and field, nothing written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from conftest import Backend
from helpers import event, events
from pupsourcing import Event, ExpectedVersion, InvalidEventError

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest

BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("bounded_context", "", "must not be empty"),
    ("aggregate_type", "", "must not be empty"),
    ("aggregate_id", "", "must not be empty"),
    ("event_type", "", "must not be empty"),
    ("event_type", None, "must be str"),
    ("aggregate_id", 42, "must be str"),
    ("event_type", "a\x00b", "NUL"),
    ("causation_id", "x\x00", "NUL"),
    ("trace_id", 7, "must be str or None"),
    ("correlation_id", "\ud800", "UTF-8"),
    ("payload", "text, not bytes", "must be bytes"),
    ("payload", bytearray(b"x"), "must be bytes"),
    ("metadata", "{}", "must be bytes or None"),
    ("metadata", b"not json", "not valid JSON"),
    ("metadata", b'{"a": NaN}', "not valid JSON"),
    ("metadata", b"\xff\xfe{}", "UTF-8"),
    ("metadata", b'{"a": 1', "not valid JSON"),
    ("event_version", 0, "between 1 and"),
    ("event_version", 2**31, "between 1 and"),
    ("event_version", True, "must be an int"),
    ("event_version", "1", "must be an int"),
    ("event_id", "47e9ad02-8738-4d4e-8f1a-1cc54f4619e7", "uuid.UUID"),
    ("created_at", datetime(2024, 1, 1), "timezone-aware"),
    ("created_at", "2024-01-01", "must be a datetime"),
]


def with_field(name: str, value: Any) -> Event:
    base = event("agg-1")
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__ if f != "_"}
    fields[name] = value
    if name in ("payload", "metadata") and not isinstance(value, bytes | None):
        # Event refuses these itself (test_core_types); append must still
        # catch one that got past it.
        object.__setattr__(base, name, value)
        return base
    positional = [
        fields.pop(f)
        for f in ("bounded_context", "aggregate_type", "aggregate_id", "event_type", "payload")
    ]
    return Event(*positional, **fields)


@pytest.mark.parametrize(("field", "value", "problem"), BAD_FIELDS)
def test_bad_field_is_rejected_with_index_and_field(
    backend: Backend, field: str, value: Any, problem: str
) -> None:
    conn = backend.connection()
    batch = [*events(2), with_field(field, value)]
    if field in ("bounded_context", "aggregate_type", "aggregate_id") and value != "":
        batch = [with_field(field, value), *events(2)]
    with pytest.raises(InvalidEventError) as caught:
        backend.store.append(conn, ExpectedVersion.any(), batch)
    error = caught.value
    assert error.field == field
    assert error.index == batch.index(next(e for e in batch if getattr(e, field) is value))
    assert f"event {error.index}" in str(error)
    assert field in str(error)
    assert problem in str(error)
    conn.commit()
    assert backend.count_events() == 0


def test_mixed_aggregates_are_rejected(backend: Backend) -> None:
    conn = backend.connection()
    for name, batch in [
        ("aggregate_id", [event("a"), event("a"), event("b")]),
        ("aggregate_type", [event("a"), event("a", aggregate_type="Invoice")]),
        ("bounded_context", [event("a"), event("a", bounded_context="Billing")]),
    ]:
        with pytest.raises(InvalidEventError) as caught:
            backend.store.append(conn, ExpectedVersion.any(), batch)
        assert caught.value.field == name
        assert caught.value.index == len(batch) - 1
        assert "one aggregate" in str(caught.value)
    conn.commit()
    assert backend.count_events() == 0


def test_duplicate_event_id_within_one_append(backend: Backend) -> None:
    conn = backend.connection()
    first = event("a")
    with pytest.raises(InvalidEventError) as caught:
        backend.store.append(conn, ExpectedVersion.any(), [first, event("a"), first])
    assert (caught.value.index, caught.value.field) == (2, "event_id")
    conn.commit()
    assert backend.count_events() == 0


def test_not_an_event(backend: Backend) -> None:
    conn = backend.connection()
    with pytest.raises(InvalidEventError) as caught:
        backend.store.append(conn, ExpectedVersion.any(), [event("a"), {"type": "x"}])  # type: ignore[list-item]
    assert (caught.value.index, caught.value.field) == (1, "event")


def test_expected_version_must_be_an_expected_version(backend: Backend) -> None:
    conn = backend.connection()
    with pytest.raises(TypeError, match="ExpectedVersion"):
        backend.store.append(conn, 3, [event("a")])  # type: ignore[arg-type]


def test_read_arguments_are_checked(backend: Backend) -> None:
    conn = backend.connection()
    with pytest.raises(ValueError, match="aggregate_id"):
        backend.store.read_aggregate_stream(conn, "Shop", "Order", "")
    with pytest.raises(ValueError, match="NUL"):
        backend.store.read_aggregate_stream(conn, "Shop", "Or\x00der", "a")
    with pytest.raises(TypeError, match="from_position"):
        backend.store.read_events(conn, "0", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="projection_name"):
        backend.store.get_checkpoint(conn, "a\x00")


@pytest.mark.parametrize(
    "name", ["Events", "events;drop table x", "1events", "", "a" * 48, "événements", "e-v"]
)
def test_table_names_are_validated(name: str) -> None:
    from pupsourcing.store import StoreConfig

    with pytest.raises(ValueError, match="events_table"):
        StoreConfig(events_table=name)


def test_table_names_must_be_distinct() -> None:
    from pupsourcing.store import StoreConfig

    with pytest.raises(ValueError, match="distinct"):
        StoreConfig(events_table="t", checkpoints_table="t")


def test_metadata_numbers_of_any_length_are_valid_json(backend: Backend) -> None:
    # Python's int() refuses more than 4,300 digits; JSON has no such limit.
    conn = backend.connection()
    metadata = b'{"n": ' + b"7" * 5000 + b"}"
    backend.store.append(conn, ExpectedVersion.any(), [event("a", metadata=metadata)])
    conn.commit()
    assert backend.store.read_events(conn, 0, 1)[0].metadata == metadata


def test_metadata_too_deep_to_parse_is_refused_not_crashing(backend: Backend) -> None:
    conn = backend.connection()
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidEventError, match="nested too deeply") as caught:
        backend.store.append(conn, ExpectedVersion.any(), [event("a"), event("a", metadata=deep)])
    assert (caught.value.index, caught.value.field) == (1, "metadata")
    conn.commit()
    assert backend.count_events() == 0
