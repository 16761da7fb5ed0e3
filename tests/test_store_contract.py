"""The store contract (API.md section 2), run against every real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from conftest import BACKENDS, Backend, backends_and_apis
from helpers import event, events
from pupsourcing import (
    Event,
    ExpectedVersion,
    NoEventsError,
    OptimisticConcurrencyError,
    PersistedEvent,
)

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


@pytest.mark.parametrize("backend", backends_and_apis(BACKENDS, ["sync"]), indirect=True)
def test_each_backend_connects_through_its_own_driver(backend: Backend) -> None:
    """The ``mysqlclient`` backend really runs the store tests on MySQLdb."""
    conn = backend.connection()
    assert type(conn).__module__.partition(".")[0] == backend.driver


def test_append_assigns_versions_and_positions(backend: Backend) -> None:
    conn = backend.connection()
    first = backend.store.append(conn, ExpectedVersion.no_stream(), events(3, "a"))
    second = backend.store.append(conn, ExpectedVersion.exact(3), events(2, "a"))
    other = backend.store.append(conn, ExpectedVersion.any(), events(1, "b"))
    conn.commit()

    assert [e.aggregate_version for e in first.events] == [1, 2, 3]
    assert (first.from_version, first.to_version) == (0, 3)
    assert (second.from_version, second.to_version) == (3, 5)
    assert (other.from_version, other.to_version) == (0, 1)
    positions = [*first.global_positions, *second.global_positions, *other.global_positions]
    assert positions == sorted(positions)
    assert len(set(positions)) == 6
    assert [e.global_position for e in first.events] == list(first.global_positions)


def test_append_result_echoes_the_events(backend: Backend) -> None:
    conn = backend.connection()
    given = events(2, "a", correlation_id="c-1")
    result = backend.store.append(conn, ExpectedVersion.any(), given)
    conn.commit()
    for original, stored in zip(given, result.events, strict=True):
        assert stored.event_id == original.event_id
        assert stored.payload == original.payload
        assert stored.correlation_id == "c-1"


def test_expected_version_rules(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
    conn.commit()

    cases = [
        (ExpectedVersion.no_stream(), 2),
        (ExpectedVersion.exact(0), 2),
        (ExpectedVersion.exact(1), 2),
        (ExpectedVersion.exact(3), 2),
    ]
    for expected, actual in cases:
        with pytest.raises(OptimisticConcurrencyError) as caught:
            store.append(conn, expected, events(1, "a"))
        conn.rollback()
        assert caught.value.expected == expected
        assert caught.value.actual == actual
        assert (caught.value.aggregate_type, caught.value.aggregate_id) == ("Order", "a")

    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.exact(1), events(1, "never-written"))
    conn.rollback()

    assert store.append(conn, ExpectedVersion.exact(2), events(1, "a")).to_version == 3
    assert store.append(conn, ExpectedVersion.any(), events(1, "a")).to_version == 4
    assert store.append(conn, ExpectedVersion.exact(0), events(1, "new")).to_version == 1
    conn.commit()
    assert backend.count_events() == 5


def test_conflict_writes_nothing(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.no_stream(), events(1, "a"))
    conn.commit()
    with pytest.raises(OptimisticConcurrencyError):
        store.append(conn, ExpectedVersion.no_stream(), events(3, "a"))
    conn.commit()  # even if the caller commits after a conflict, nothing was written
    assert backend.count_events() == 1
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 1


def test_duplicate_event_id_is_a_conflict_and_writes_nothing(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    stored = store.append(conn, ExpectedVersion.any(), events(1, "a"))
    conn.commit()
    again = event("b", event_id=stored.events[0].event_id)
    with pytest.raises(OptimisticConcurrencyError, match="event id"):
        store.append(conn, ExpectedVersion.any(), [again])
    conn.rollback()
    assert backend.count_events() == 1
    assert store.read_aggregate_stream(conn, "Shop", "Order", "b").is_empty


def test_empty_append(backend: Backend) -> None:
    conn = backend.connection()
    with pytest.raises(NoEventsError):
        backend.store.append(conn, ExpectedVersion.any(), [])
    with pytest.raises(ValueError, match="at least one event"):
        backend.store.append(conn, ExpectedVersion.any(), iter([]))


def test_append_accepts_any_iterable(backend: Backend) -> None:
    conn = backend.connection()
    result = backend.store.append(conn, ExpectedVersion.any(), (e for e in events(3)))
    assert result.to_version == 3


def test_store_never_commits(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(2, "a"))
    store.update_checkpoint(conn, "p", 2)
    conn.rollback()
    assert backend.count_events() == 0
    assert store.get_checkpoint(conn, "p") == 0
    assert store.read_aggregate_stream(conn, "Shop", "Order", "a").is_empty


def test_append_is_atomic_with_the_callers_own_writes(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE side_effects (note TEXT)")
    conn.commit()
    cursor.execute("INSERT INTO side_effects VALUES ('written with the event')")
    store.append(conn, ExpectedVersion.any(), events(1, "a"))
    conn.rollback()
    assert backend.scalar("SELECT count(*) FROM side_effects") == 0
    assert backend.count_events() == 0

    cursor.execute("INSERT INTO side_effects VALUES ('written with the event')")
    store.append(conn, ExpectedVersion.any(), events(1, "a"))
    conn.commit()
    assert backend.scalar("SELECT count(*) FROM side_effects") == 1
    assert backend.count_events() == 1


def test_read_events(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    positions = []
    for aggregate in ("a", "b", "c"):
        positions += store.append(
            conn, ExpectedVersion.any(), events(3, aggregate)
        ).global_positions
    conn.commit()

    everything = store.read_events(conn, 0, 100)
    assert [e.global_position for e in everything] == positions
    page = store.read_events(conn, positions[2], 4)
    assert [e.global_position for e in page] == positions[3:7]
    assert store.read_events(conn, positions[-1], 10) == []
    assert store.read_events(conn, 0, 0) == []
    with pytest.raises(ValueError, match="limit"):
        store.read_events(conn, 0, -1)
    with pytest.raises(ValueError, match="from_position"):
        store.read_events(conn, -1, 10)


def test_read_aggregate_stream_ranges(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(5, "a"))
    store.append(conn, ExpectedVersion.any(), events(2, "b"))
    store.append(conn, ExpectedVersion.any(), events(2, "a", bounded_context="Other"))
    conn.commit()

    def versions(*bounds: int | None) -> list[int]:
        stream = store.read_aggregate_stream(conn, "Shop", "Order", "a", *bounds)
        assert (stream.bounded_context, stream.aggregate_type, stream.aggregate_id) == (
            "Shop",
            "Order",
            "a",
        )
        return [e.aggregate_version for e in stream]

    assert versions() == [1, 2, 3, 4, 5]
    assert versions(2) == [2, 3, 4, 5]
    assert versions(None, 3) == [1, 2, 3]
    assert versions(2, 4) == [2, 3, 4]
    assert versions(3, 3) == [3]
    assert versions(4, 2) == []
    assert versions(6) == []
    stream = store.read_aggregate_stream(conn, "Shop", "Order", "a", 2, 4)
    assert stream.version == 4
    missing = store.read_aggregate_stream(conn, "Shop", "Order", "zzz")
    assert missing.is_empty
    assert missing.version == 0
    other_context = store.read_aggregate_stream(conn, "Other", "Order", "a")
    assert [e.aggregate_version for e in other_context] == [1, 2]


def test_every_field_round_trips(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    plus_two = timezone(timedelta(hours=2))
    originals = [
        Event(
            "Shop",
            "Order",
            "o-ü-1",
            "OrderPlaced",
            bytes(range(256)) * 3,
            event_version=7,
            event_id=uuid.uuid4(),
            metadata=b'{"user": "\xc3\xa9l\xc3\xa8ve", "n": [1, 2.5, null]}',
            causation_id="cause-1",
            correlation_id="corr-1",
            trace_id="trace-1",
            created_at=datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=plus_two),
        ),
        Event(
            "Shop",
            "Order",
            "o-ü-1",
            "Empty",
            b"",
            metadata=None,
            causation_id="",
            correlation_id=None,
            trace_id="",
            created_at=datetime(1999, 12, 31, 0, 0, 0, 1, tzinfo=UTC),
        ),
    ]
    store.append(conn, ExpectedVersion.any(), originals)
    conn.commit()

    reader = backend.connection()
    for read in (
        store.read_events(reader, 0, 10),
        list(store.read_aggregate_stream(reader, "Shop", "Order", "o-ü-1")),
    ):
        assert len(read) == 2
        for original, stored in zip(originals, read, strict=True):
            assert isinstance(stored, PersistedEvent)
            for name in (
                "bounded_context",
                "aggregate_type",
                "aggregate_id",
                "event_type",
                "payload",
                "event_version",
                "event_id",
                "metadata",
                "causation_id",
                "correlation_id",
                "trace_id",
                "created_at",
            ):
                assert getattr(stored, name) == getattr(original, name), name
            assert type(stored.payload) is bytes
            assert stored.created_at.utcoffset() is not None
            assert stored.created_at.microsecond == original.created_at.microsecond
        assert read[1].causation_id == ""
        assert read[1].correlation_id is None
        assert read[1].metadata is None


def test_checkpoints(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    assert store.get_checkpoint(conn, "projection") == 0
    store.update_checkpoint(conn, "projection", 5)
    store.update_checkpoint(conn, "other", 7)
    store.update_checkpoint(conn, "projection", 9)
    conn.commit()
    reader = backend.connection()
    assert store.get_checkpoint(reader, "projection") == 9
    assert store.get_checkpoint(reader, "other") == 7
    with pytest.raises(ValueError, match="position"):
        store.update_checkpoint(conn, "projection", -1)
    with pytest.raises(ValueError, match="projection_name"):
        store.update_checkpoint(conn, "", 1)


def test_create_schema_is_idempotent(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(1))
    conn.commit()
    store.create_schema(conn)
    store.create_schema(conn)
    conn.commit()
    assert backend.count_events() == 1


def test_create_schema_in_an_open_transaction(backend: Backend) -> None:
    """What docs/adapters/mysql.md and the docstring say: MySQL's DDL commits
    the caller's pending writes; PostgreSQL and SQLite leave them to it."""
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(1))
    store.create_schema(conn)
    conn.rollback()
    assert backend.count_events() == (1 if backend.name == "mysql" else 0)


def test_schema_sql_matches_migrations(backend: Backend) -> None:
    from pupsourcing.migrations import generate_sql

    assert backend.store.schema_sql() == generate_sql(backend.name, backend.store.config)


def test_custom_table_names(make_store_backend: object, backend: Backend) -> None:
    from pupsourcing.store import StoreConfig

    config = StoreConfig("es_events", "es_checkpoints", "es_heads")
    custom = make_store_backend(backend.name, config, backend.api)  # type: ignore[operator]
    conn = custom.connection()
    custom.store.append(conn, ExpectedVersion.any(), events(2))
    custom.store.update_checkpoint(conn, "p", 2)
    conn.commit()
    assert custom.scalar("SELECT count(*) FROM es_events") == 2
    assert custom.scalar("SELECT aggregate_version FROM es_heads") == 2
    assert custom.scalar("SELECT last_global_position FROM es_checkpoints") == 2


def test_reads_work_on_an_autocommit_connection(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(2))
    conn.commit()
    reader = backend.connection()
    backend.set_autocommit(reader)
    assert len(store.read_events(reader, 0, 10)) == 2
    assert store.read_aggregate_stream(reader, "Shop", "Order", "agg-1").version == 2
    assert store.get_checkpoint(reader, "x") == 0


def test_large_append_and_many_aggregates(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    result = store.append(conn, ExpectedVersion.no_stream(), events(1200, "big"))
    conn.commit()
    assert result.to_version == 1200
    assert list(result.global_positions) == sorted(result.global_positions)
    stream = store.read_aggregate_stream(conn, "Shop", "Order", "big")
    assert [e.aggregate_version for e in stream] == list(range(1, 1201))
    assert [e.global_position for e in stream] == list(result.global_positions)
