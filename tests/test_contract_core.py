"""API.md sections 1-5, read from outside: the claims no other test pins.

Only the public names API.md gives, imported as it writes them; every test
on a store runs on each database and, where the module's ``both_apis`` mark
applies, through both the blocking and the asyncio API (see conftest).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend
from helpers import event, events
from pupsourcing import (
    Event,
    ExpectedVersion,
    InvalidEventError,
    OptimisticConcurrencyError,
    PersistedEvent,
    ProjectionError,
)
from pupsourcing.migrations import generate_sql
from pupsourcing.projection import HashPartitionStrategy, ProcessorConfig
from pupsourcing.store import StoreConfig

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


# -- 1. core types ----------------------------------------------------------------


def test_persisted_event_is_frozen_slotted_with_keyword_positions() -> None:
    pe = PersistedEvent("B", "T", "i", "E", b"x", global_position=7, aggregate_version=2)
    assert isinstance(pe, Event)
    assert (pe.global_position, pe.aggregate_version) == (7, 2)
    assert not hasattr(pe, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pe.global_position = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        PersistedEvent("B", "T", "i", "E", b"x", 1, 7, 2)  # type: ignore[misc]


def test_hash_partitioning_of_one_or_fewer_partitions_takes_everything() -> None:
    strategy = HashPartitionStrategy()
    for total in (1, 0, -3):
        assert all(strategy.should_process(i, k, total) for i in ("a", "ü", "") for k in (0, 2))


# -- 2. stores --------------------------------------------------------------------


def test_a_concurrent_writer_that_wins_makes_the_loser_a_conflict_naming_the_aggregate(
    backend: Backend,
) -> None:
    store = backend.store
    winner = backend.connection()
    store.append(winner, ExpectedVersion.no_stream(), events(1, "raced"))
    caught: list[BaseException] = []

    def lose() -> None:
        loser = backend.connect()  # in its thread: sqlite3 wants it so
        try:
            store.append(loser, ExpectedVersion.no_stream(), events(2, "raced"))
        except BaseException as exc:
            caught.append(exc)
        finally:
            loser.rollback()
            loser.close()

    thread = threading.Thread(target=lose)
    thread.start()
    time.sleep(0.3)  # the loser waits on the winner's lock (or reads before it commits)
    winner.commit()
    thread.join(30)
    (error,) = caught
    assert isinstance(error, OptimisticConcurrencyError), error
    assert (error.aggregate_type, error.aggregate_id) == ("Order", "raced")
    assert error.expected == ExpectedVersion.no_stream()
    assert error.actual in (None, 1)
    assert store.read_aggregate_stream(winner, "Shop", "Order", "raced").version == 1


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["before-year-1-in-utc", "after-year-9999-in-utc"],
)
def test_a_created_at_that_no_datetime_holds_in_utc_is_invalid_and_writes_nothing(
    backend: Backend, created_at: datetime
) -> None:
    """Stored, it could never be read back (the round trip promise): it is
    bad input, named like every other."""
    store, conn = backend.store, backend.connection()
    with pytest.raises(InvalidEventError) as caught:
        store.append(conn, ExpectedVersion.any(), [event("a"), event("a", created_at=created_at)])
    assert (caught.value.index, caught.value.field) == (1, "created_at")
    assert "event 1" in str(caught.value)
    assert "created_at" in str(caught.value)
    conn.commit()
    assert backend.count_events() == 0
    assert store.read_events(conn, 0, 10) == []


def _make_read_only(backend: Backend, conn: Any) -> None:
    statement = {
        "postgres": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "mysql": "SET SESSION TRANSACTION READ ONLY",
        "sqlite": "PRAGMA query_only = ON",
    }[backend.name]
    cursor = conn.cursor()
    cursor.execute(statement)
    cursor.close()
    conn.commit()


def test_reads_work_on_a_read_only_connection(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(3, "a"))
    store.update_checkpoint(conn, "p", 2)
    conn.commit()
    reader = backend.connection()
    _make_read_only(backend, reader)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's own error
        store.append(reader, ExpectedVersion.any(), events(1, "b"))
    reader.rollback()
    for _ in range(2):  # a read ending its transaction leaves the next one working
        assert [e.aggregate_version for e in store.read_events(reader, 0, 10)] == [1, 2, 3]
        assert store.read_aggregate_stream(reader, "Shop", "Order", "a").version == 3
        assert store.get_checkpoint(reader, "p") == 2
        assert store.get_checkpoint(reader, "none") == 0
        reader.commit()


def test_reads_work_on_a_read_only_autocommit_connection(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(2, "a"))
    conn.commit()
    reader = backend.connection()
    _make_read_only(backend, reader)
    backend.set_autocommit(reader)
    assert len(store.read_events(reader, 0, 10)) == 2
    assert store.read_aggregate_stream(reader, "Shop", "Order", "a").version == 2
    assert store.get_checkpoint(reader, "none") == 0


def test_update_checkpoint_sets_the_position_it_is_given(backend: Backend) -> None:
    """An upsert: the row is written as given, also when it goes back."""
    store, conn = backend.store, backend.connection()
    store.update_checkpoint(conn, "p", 9)
    store.update_checkpoint(conn, "p", 9)
    conn.commit()
    store.update_checkpoint(conn, "p", 4)
    conn.commit()
    assert store.get_checkpoint(backend.connection(), "p") == 4
    store.update_checkpoint(conn, "p", 0)
    conn.commit()
    assert store.get_checkpoint(backend.connection(), "p") == 0


@pytest.mark.parametrize(
    "name", ["it's", 'a"b', "back\\slash", "100%", "%s", "{x}", "ü-😀", "x'; DROP TABLE events; --"]
)
def test_names_a_caller_passes_are_values_not_sql(backend: Backend, name: str) -> None:
    store, conn = backend.store, backend.connection()
    store.update_checkpoint(conn, name, 3)
    store.append(conn, ExpectedVersion.any(), [event(name, bounded_context=name)])
    conn.commit()
    reader = backend.connection()
    assert store.get_checkpoint(reader, name) == 3
    assert store.get_checkpoint(reader, name + "?") == 0
    stream = store.read_aggregate_stream(reader, name, "Order", name)
    assert [(e.bounded_context, e.aggregate_id) for e in stream] == [(name, name)]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(("sqlite", "sync"), id="sqlite"),
        pytest.param(("sqlite", "async"), id="sqlite-async"),
    ],
    indirect=True,
)
def test_sqlite_append_without_a_transaction_begins_one_the_caller_ends(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    backend.set_autocommit(conn)
    store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
    conn.rollback()
    assert backend.count_events() == 0
    store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
    assert backend.count_events() == 0  # not committed yet
    conn.commit()
    assert backend.count_events() == 2


def test_read_aggregate_stream_takes_its_bounds_by_keyword(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), events(5, "a"))
    conn.commit()
    stream = store.read_aggregate_stream(
        conn,
        bounded_context="Shop",
        aggregate_type="Order",
        aggregate_id="a",
        from_version=2,
        to_version=4,
    )
    assert [e.aggregate_version for e in stream] == [2, 3, 4]
    assert [e.aggregate_version for e in stream.events] == [2, 3, 4]
    assert len(stream) == 3
    assert stream.version == 4
    assert not stream.is_empty


# -- 3. projections ---------------------------------------------------------------


class Named:
    """A projection whose name is a property; scopes given or not."""

    def __init__(self, label: str, **scope: Any) -> None:
        self._label = label
        for key, value in scope.items():
            setattr(self, key, value)
        self.seen: list[int] = []

    @property
    def name(self) -> str:
        return self._label

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen.append(event.global_position)


def _mixed_store(backend: Backend) -> list[int]:
    conn = backend.connection()
    positions: list[int] = []
    for context, kind in (("Shop", "Order"), ("Shop", "Invoice"), ("Billing", "Order")):
        result = backend.store.append(
            conn,
            ExpectedVersion.any(),
            events(2, f"{context}-{kind}", bounded_context=context, aggregate_type=kind),
        )
        positions += result.global_positions
    conn.commit()
    return positions


def test_a_name_property_and_empty_scopes_mean_every_event(backend: Backend) -> None:
    positions = _mixed_store(backend)
    for projection in (
        Named("plain"),
        Named("empty", aggregate_types=(), bounded_contexts=()),
        Named("nones", aggregate_types=None, bounded_contexts=None),
    ):
        with backend.Processor(backend.connect, backend.store) as processor:
            assert processor.catch_up(projection) == len(positions)
        assert projection.seen == positions
        assert backend.checkpoints()[projection.name] == positions[-1]


def test_catch_up_counts_the_events_handed_to_handle(backend: Backend) -> None:
    positions = _mixed_store(backend)
    scoped = Named("scoped", aggregate_types=("Order",), bounded_contexts=("Shop",))
    with backend.Processor(backend.connect, backend.store) as processor:
        assert processor.catch_up(scoped) == 2
        assert processor.catch_up(scoped) == 0
    assert scoped.seen == positions[:2]


def test_a_partitioned_processor_keeps_its_checkpoint_under_the_go_key(backend: Backend) -> None:
    positions = _mixed_store(backend)
    handled = 0
    for key in range(3):
        projection = Named("split")
        config = ProcessorConfig(50, key, 3)  # batch_size, partition_key, total_partitions
        with backend.Processor(backend.connect, backend.store, config) as processor:
            handled += processor.catch_up(projection)
    assert handled == len(positions)
    assert {n: p for n, p in backend.checkpoints().items() if n.startswith("split")} == {
        "split_p0": positions[-1],
        "split_p1": positions[-1],
        "split_p2": positions[-1],
    }


@pytest.mark.parametrize(("field", "value"), [("batch_size", 2**63), ("total_partitions", 2**31)])
def test_processor_config_refuses_sizes_no_store_can_hold(field: str, value: int) -> None:
    """A batch size is a BIGINT ``LIMIT``, a partition count an ``INT`` column:
    beyond them the driver failed at the first batch, not the config."""
    with pytest.raises(ValueError, match=field):
        ProcessorConfig(**{field: value})


def test_the_largest_sizes_a_config_takes_work_on_every_database(backend: Backend) -> None:
    positions = _mixed_store(backend)
    wide, many = Named("wide"), Named("many")
    key, total = 2**31 - 2, 2**31 - 1
    with backend.Processor(
        backend.connect, backend.store, ProcessorConfig(batch_size=2**63 - 1)
    ) as processor:
        assert processor.catch_up(wide) == len(positions)
    config = ProcessorConfig(partition_key=key, total_partitions=total)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        processor.catch_up(many)
    mine = [f"{c}-{t}" for c, t in (("Shop", "Order"), ("Shop", "Invoice"), ("Billing", "Order"))]
    expected = [
        p
        for p, aggregate in zip(positions, [a for a in mine for _ in (1, 2)], strict=True)
        if HashPartitionStrategy().should_process(aggregate, key, total)
    ]
    assert many.seen == expected
    assert backend.checkpoints()["wide"] == positions[-1]
    assert backend.checkpoints()[f"many_p{key}"] == positions[-1]


def _closed(backend: Backend, conn: Any) -> bool:
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
    except Exception:
        return True
    return False


def test_close_closes_the_connections_the_processor_opened(backend: Backend) -> None:
    _mixed_store(backend)
    used: list[Any] = []

    class Keep(Named):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            used.append(tx)

    processor = backend.Processor(backend.connect, backend.store)
    processor.catch_up(Keep("opened"))
    assert used
    assert not _closed(backend, used[0])
    processor.close()
    assert _closed(backend, used[0])

    mine = backend.connection()
    with backend.Processor(mine, backend.store) as processor:
        processor.catch_up(Keep("given"))
    assert not _closed(backend, mine)


def test_run_raises_projection_error_and_keeps_the_checkpoint(backend: Backend) -> None:
    positions = _mixed_store(backend)

    class Fails(Named):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            if event.global_position == positions[3]:
                raise KeyError("no such thing")
            super().handle(event, tx)

    config = ProcessorConfig(batch_size=2, poll_interval=0.01)
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)  # a run that never raises still ends
    timer.start()
    try:
        with (
            backend.Processor(backend.connect, backend.store, config) as processor,
            pytest.raises(ProjectionError) as caught,
        ):
            processor.run(Fails("fails"), stop=stop)
    finally:
        timer.cancel()
    assert not stop.is_set()
    assert (caught.value.projection, caught.value.global_position) == ("fails", positions[3])
    assert isinstance(caught.value.__cause__, KeyError)
    assert backend.checkpoints()["fails"] == positions[1]


# -- 5. tooling -------------------------------------------------------------------


def test_python_m_pupsourcing_migrate_gen_writes_generate_sql(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pupsourcing",
            "migrate-gen",
            "--adapter",
            "sqlite",
            "--output",
            str(tmp_path),
            "--events-table",
            "ev",
            "--checkpoints-table",
            "cp",
            "--aggregate-heads-table",
            "hd",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (written,) = tmp_path.iterdir()
    assert written.name.endswith("_init_event_sourcing.sql")
    assert written.read_text() == generate_sql("sqlite", StoreConfig("ev", "cp", "hd"))


def test_eventmap_gen_maps_folders_to_versions_and_class_names_to_types(
    tmp_path: Path,
) -> None:
    package = tmp_path / "shop_events"
    for folder, fields in (("v1", "sku: str"), ("v2", "sku: str\n    qty: int"), ("v10", "n: int")):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
        (package / folder / "orders.py").write_text(
            f"from dataclasses import dataclass\n\n\n@dataclass\nclass ItemAdded:\n    {fields}\n"
        )
    (package / "__init__.py").write_text("")
    out = tmp_path / "mapping"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pupsourcing",
            "eventmap-gen",
            "--input",
            str(package),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    script = """
import json, sys
from pupsourcing import PersistedEvent
sys.path[:0] = [".", "mapping"]
import event_mapping as m
from shop_events.v1.orders import ItemAdded as V1
from shop_events.v2.orders import ItemAdded as V2
from shop_events.v10.orders import ItemAdded as V10
given = [V1("a"), V2("b", 2), V10(7)]
stored = m.to_es_events("Shop", "Order", "o-1", given, correlation_id="c", metadata=b'{"u":1}')
print(json.dumps([[e.event_type, e.event_version, e.correlation_id, e.metadata.decode()]
                  for e in stored]))
print([m.event_type_of(e) for e in given])
assert m.from_es_events(stored) == given
assert m.from_es_event(stored[2]) == V10(7)
for event_type, version in (("ItemRemoved", 1), ("ItemAdded", 3)):
    unknown = PersistedEvent("Shop", "Order", "o-1", event_type, b"{}",
                             event_version=version, global_position=1, aggregate_version=1)
    try:
        m.from_es_event(unknown)
    except Exception as exc:
        print(event_type in str(exc) and str(version) in str(exc))
"""
    checked = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        '[["ItemAdded", 1, "c", "{\\"u\\":1}"], ["ItemAdded", 2, "c", "{\\"u\\":1}"], '
        '["ItemAdded", 10, "c", "{\\"u\\":1}"]]',
        "['ItemAdded', 'ItemAdded', 'ItemAdded']",
        "True",
        "True",
    ]
