"""Projections (API.md sections 3 and 4) against every real database."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, backends_and_apis
from helpers import event, events
from pupsourcing import ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.core.errors import StoredValueError
from pupsourcing.core.hashing import fnv1a_32
from pupsourcing.projection import HashPartitionStrategy, ProcessorConfig
from pupsourcing.projection.batch import DECODE_CHUNK, Handle
from pupsourcing.runner import NoProjectionsError, ProjectionRunner

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


class ReadModel:
    """Writes one row per event through ``tx``: a duplicate would violate the key."""

    def __init__(self, backend: Backend, name: str = "read_model", table: str = "rm") -> None:
        self.name = name
        self.table = table
        self.mark = "?" if backend.name == "sqlite" else "%s"
        self.calls: list[int] = []
        self.fail_at: int | None = None

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.calls.append(event.global_position)
        cursor = tx.cursor()
        cursor.execute(
            f"INSERT INTO {self.table} (position, aggregate_id) VALUES ({self.mark}, {self.mark})",
            (event.global_position, event.aggregate_id),
        )
        if self.fail_at is not None and event.global_position == self.fail_at:
            raise RuntimeError(f"boom at {event.global_position}")


def create_read_model(backend: Backend, table: str = "rm") -> None:
    conn = backend.connect()
    conn.cursor().execute(
        f"CREATE TABLE {table} (position BIGINT PRIMARY KEY, aggregate_id VARCHAR(255))"
    )
    conn.commit()
    conn.close()


def read_model_positions(backend: Backend, table: str = "rm") -> list[int]:
    conn = backend.connect()
    cursor = conn.cursor()
    cursor.execute(f"SELECT position FROM {table} ORDER BY position")
    rows = [int(r[0]) for r in cursor.fetchall()]
    conn.close()
    return rows


def append_many(backend: Backend, aggregates: int, per_aggregate: int, **fields: Any) -> list[int]:
    conn = backend.connection()
    positions: list[int] = []
    for a in range(aggregates):
        result = backend.store.append(
            conn, ExpectedVersion.any(), events(per_aggregate, f"agg-{a}", **fields)
        )
        positions += result.global_positions
    conn.commit()
    return positions


# -- partitioning -------------------------------------------------------------


def test_fnv1a_matches_the_reference_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_hash_partition_strategy() -> None:
    strategy = HashPartitionStrategy()
    assert strategy.should_process("anything", 0, 1)
    assert strategy.should_process("anything", 5, 0)
    for aggregate_id in ("order-1", "ü-ñ-😀", "", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"):
        owners = [k for k in range(4) if strategy.should_process(aggregate_id, k, 4)]
        assert owners == [fnv1a_32(aggregate_id.encode()) % 4]


def test_stored_partition_hash_is_fnv1a_of_the_aggregate_id(backend: Backend) -> None:
    conn = backend.connection()
    backend.store.append(conn, ExpectedVersion.any(), events(2, "ü-order-😀"))
    conn.commit()
    stored = backend.scalar("SELECT DISTINCT partition_hash FROM events")
    assert int(stored) == fnv1a_32("ü-order-😀".encode())


def test_processor_config_validation() -> None:
    for bad, field in (
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"total_partitions": 0}, "total_partitions"),
        ({"partition_key": 4, "total_partitions": 4}, "partition_key"),
        ({"partition_key": -1}, "partition_key"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
        ({"partition_strategy": object()}, "partition_strategy"),
        ({"logger": "pupsourcing"}, "logger"),
    ):
        with pytest.raises(ValueError, match=field):
            ProcessorConfig(**bad)
    config = ProcessorConfig(partition_key=2, total_partitions=4)
    assert config.checkpoint_name("p") == "p_p2"
    assert ProcessorConfig().checkpoint_name("p") == "p"


# -- exactly once, checkpoints, failures -----------------------------------------


def test_catch_up_builds_the_read_model_exactly_once(backend: Backend) -> None:
    create_read_model(backend)
    positions = append_many(backend, aggregates=5, per_aggregate=7)
    projection = ReadModel(backend)
    with backend.Processor(
        backend.connect, backend.store, ProcessorConfig(batch_size=10)
    ) as processor:
        assert processor.catch_up(projection) == 35
        assert processor.catch_up(projection) == 0
    assert projection.calls == positions
    assert read_model_positions(backend) == positions
    conn = backend.connection()
    assert backend.store.get_checkpoint(conn, "read_model") == positions[-1]

    more = append_many(backend, aggregates=1, per_aggregate=3)
    resumed = ReadModel(backend)
    with backend.Processor(backend.connect, backend.store) as processor:
        assert processor.catch_up(resumed) == 3
    assert resumed.calls == more
    assert read_model_positions(backend) == positions + more


def test_handler_failure_rolls_back_the_batch(backend: Backend) -> None:
    create_read_model(backend)
    positions = append_many(backend, aggregates=3, per_aggregate=4)
    projection = ReadModel(backend)
    projection.fail_at = positions[6]
    processor = backend.Processor(backend.connect, backend.store, ProcessorConfig(batch_size=5))
    with pytest.raises(ProjectionError) as caught:
        processor.catch_up(projection)
    error = caught.value
    assert error.projection == "read_model"
    assert error.global_position == positions[6]
    assert isinstance(error.__cause__, RuntimeError)
    assert "boom" in str(error.__cause__)
    # the first batch (5 events) committed; the failed one left nothing behind
    assert read_model_positions(backend) == positions[:5]
    assert backend.store.get_checkpoint(backend.connection(), "read_model") == positions[4]
    processor.close()

    projection.fail_at = None
    with backend.Processor(
        backend.connect, backend.store, ProcessorConfig(batch_size=5)
    ) as processor:
        assert processor.catch_up(projection) == 7
    assert read_model_positions(backend) == positions


def test_a_batch_is_decoded_a_few_rows_at_a_time() -> None:
    # A thousand events alive at once outlive the garbage collector's young
    # generation; decoding as the handler goes lets each event die young.
    calls: list[int] = []

    def decode(rows: Any) -> Any:
        calls.append(len(rows))
        return [row[0] for row in rows]

    batch = Handle([(i,) for i in range(2 * DECODE_CHUNK + 5)], decode)
    assert len(batch) == 2 * DECODE_CHUNK + 5
    events = iter(batch)
    assert next(events) == 0
    assert calls == [DECODE_CHUNK]
    assert list(events) == list(range(1, 2 * DECODE_CHUNK + 5))
    assert calls == [DECODE_CHUNK, DECODE_CHUNK, 5]


@pytest.mark.parametrize("backend", backends_and_apis(["sqlite"]), indirect=True)
def test_a_row_that_cannot_be_decoded_is_not_blamed_on_the_handler(backend: Backend) -> None:
    # The event id is decoded when the handler first reads it; a corrupt one
    # must still surface as the decoding error it is (not a ProjectionError,
    # which a dead-letter policy would skip), with the batch rolled back.
    positions = append_many(backend, aggregates=1, per_aggregate=3)
    conn = backend.connection()
    conn.cursor().execute(
        "UPDATE events SET event_id = 'not-a-uuid' WHERE global_position = ?", (positions[1],)
    )
    conn.commit()
    projection = IdRecorder("corrupt")
    with (
        backend.Processor(backend.connect, backend.store) as processor,
        pytest.raises(ValueError, match="UUID") as caught,
    ):
        processor.catch_up(projection)
    assert isinstance(caught.value, StoredValueError)
    assert f"global position {positions[1]}: stored event_id 'not-a-uuid'" in str(caught.value)
    assert not isinstance(caught.value, ProjectionError)
    assert backend.store.get_checkpoint(backend.connection(), "corrupt") == 0
    # A projection that never reads the event id handles every event.
    reader = Recorder("no_ids")
    with backend.Processor(backend.connect, backend.store) as processor:
        assert processor.catch_up(reader) == 3
    assert [e.global_position for e in reader.seen] == positions


class SessionReadModel(ReadModel):
    """A read model that also notes which server connection handled each event."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.session_sql = backend.session_sql()
        self.sessions: list[int] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        cursor = tx.cursor()
        cursor.execute(self.session_sql)
        self.sessions.append(int(cursor.fetchone()[0]))
        super().handle(event, tx)


def test_processor_reconnects_when_its_connection_is_lost(
    server: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    create_read_model(server)
    positions = append_many(server, aggregates=1, per_aggregate=3)
    projection = SessionReadModel(server)
    config = ProcessorConfig(poll_interval=0.01)
    with server.Processor(server.connect, server.store, config) as processor:
        assert processor.catch_up(projection) == 3
        lost = projection.sessions[-1]
        server.kill_session(lost)
        more = append_many(server, aggregates=2, per_aggregate=2)
        with caplog.at_level(logging.INFO, logger="pupsourcing"):
            assert processor.catch_up(projection) == 4
    assert any("lost its connection" in r.getMessage() for r in caplog.records)
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    assert set(projection.sessions[:3]) == {lost}
    assert lost not in projection.sessions[3:]
    assert projection.calls == positions + more
    assert read_model_positions(server) == positions + more


@pytest.mark.parametrize("server", backends_and_apis(["postgres"], ["sync"]), indirect=True)
def test_a_long_outage_logs_one_error_naming_the_projection(
    server: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection is lost, and the database refuses the next attempts:
    one ERROR says so (which projection, why), the attempts that fail again
    are not each an ERROR, and the reconnection names the projection too."""
    import psycopg

    create_read_model(server)
    append_many(server, aggregates=1, per_aggregate=2)
    projection = SessionReadModel(server)
    refusals = 0

    def connect() -> Any:
        nonlocal refusals
        if projection.sessions and refusals < 4:  # the database is down a while
            refusals += 1
            return psycopg.connect("host=127.0.0.1 port=1 connect_timeout=2")
        return server.connect()

    config = ProcessorConfig(poll_interval=0.01)
    with server.Processor(connect, server.store, config) as processor:
        assert processor.catch_up(projection) == 2
        server.kill_session(projection.sessions[-1])
        append_many(server, aggregates=1, per_aggregate=1)
        with caplog.at_level(logging.INFO, logger="pupsourcing"):
            assert processor.catch_up(projection) == 1
    assert refusals == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "read_model" in errors[0]
    assert "lost its connection" in errors[0]
    [back] = [r.getMessage() for r in caplog.records if "reconnected" in r.getMessage()]
    assert "read_model" in back


def test_processor_on_the_callers_connection_leaves_it_open(backend: Backend) -> None:
    create_read_model(backend)
    append_many(backend, aggregates=1, per_aggregate=2)
    conn = backend.connect()
    with backend.Processor(conn, backend.store) as processor:
        assert processor.catch_up(ReadModel(backend)) == 2
    cursor = conn.cursor()
    cursor.execute("SELECT count(*) FROM rm")
    assert cursor.fetchone()[0] == 2
    conn.close()


def test_projection_needs_a_name_and_handle(backend: Backend) -> None:
    processor = backend.Processor(backend.connect, backend.store)

    class Nameless:
        def handle(self, event: PersistedEvent, tx: Any) -> None: ...

    class NoHandle:
        name = "x"

    with pytest.raises(TypeError, match="name"):
        processor.catch_up(Nameless())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handle"):
        processor.catch_up(NoHandle())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        backend.Processor(backend.connect, object())  # type: ignore[arg-type]
    processor.close()


# -- scopes and partitions ----------------------------------------------------------


class Recorder:
    def __init__(self, name: str, **scope: Any) -> None:
        self.name = name
        for key, value in scope.items():
            setattr(self, key, value)
        self.seen: list[PersistedEvent] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen.append(event)


class IdRecorder(Recorder):
    """Reads each event's id, which a store decodes when it is first read."""

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        assert isinstance(event.event_id, uuid.UUID)
        super().handle(event, tx)


class FetchCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fetched = 0
        self.handled = 0
        self.messages: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record)
        self.fetched += getattr(record, "fetched", 0)
        self.handled += getattr(record, "handled", 0)


def counting_logger(name: str) -> tuple[logging.Logger, FetchCounter]:
    logger = logging.getLogger(f"pupsourcing.test.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    counter = FetchCounter()
    logger.handlers[:] = [counter]
    return logger, counter


def test_scoped_projection_fetches_only_its_scope(backend: Backend) -> None:
    conn = backend.connection()
    store = backend.store
    for i in range(30):
        store.append(conn, ExpectedVersion.any(), [event(f"o{i}", aggregate_type="Order")])
        store.append(conn, ExpectedVersion.any(), [event(f"u{i}", aggregate_type="User")])
        store.append(
            conn,
            ExpectedVersion.any(),
            [event(f"i{i}", aggregate_type="Order", bounded_context="Billing")],
        )
    conn.commit()
    last = store.read_events(conn, 0, 1000)[-1].global_position

    logger, counter = counting_logger("scope")
    orders = Recorder("orders", aggregate_types=["Order"], bounded_contexts=("Shop",))
    with backend.Processor(
        backend.connect, store, ProcessorConfig(batch_size=7, logger=logger)
    ) as processor:
        assert processor.catch_up(orders) == 30
    assert {(e.bounded_context, e.aggregate_type) for e in orders.seen} == {("Shop", "Order")}
    assert counter.fetched == counter.handled == 30
    # a fresh connection: on MySQL (REPEATABLE READ) conn still reads its old snapshot
    assert store.get_checkpoint(backend.connection(), "orders") == last

    billing_or_users = Recorder("mixed", aggregate_types=["User", "Order"], bounded_contexts=[])
    with backend.Processor(backend.connect, store) as processor:
        assert processor.catch_up(billing_or_users) == 90
    everything = Recorder("all", aggregate_types=(), bounded_contexts=None)
    with backend.Processor(backend.connect, store) as processor:
        assert processor.catch_up(everything) == 90

    with pytest.raises(TypeError, match="aggregate_types"):
        backend.Processor(backend.connect, store).catch_up(Recorder("bad", aggregate_types="Order"))


def test_scoped_checkpoint_moves_through_other_events(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    store.append(conn, ExpectedVersion.any(), [event("o1", aggregate_type="Order")])
    for i in range(50):
        store.append(conn, ExpectedVersion.any(), [event(f"u{i}", aggregate_type="User")])
    conn.commit()
    last = store.read_events(conn, 0, 100)[-1].global_position
    orders = Recorder("orders", aggregate_types=["Order"])
    with backend.Processor(backend.connect, store, ProcessorConfig(batch_size=5)) as processor:
        assert processor.catch_up(orders) == 1
    # a fresh connection: on MySQL (REPEATABLE READ) conn still reads its old snapshot
    assert store.get_checkpoint(backend.connection(), "orders") == last


def test_four_partitions_handle_every_event_exactly_once(backend: Backend) -> None:
    positions = append_many(backend, aggregates=40, per_aggregate=3)
    seen: Counter[int] = Counter()
    owners: dict[str, set[int]] = {}
    fetched = handled = 0
    for key in range(4):
        logger, counter = counting_logger(f"p{key}")
        projection = Recorder("partitioned")
        config = ProcessorConfig(
            batch_size=10, partition_key=key, total_partitions=4, logger=logger
        )
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(projection)
        for e in projection.seen:
            seen[e.global_position] += 1
            owners.setdefault(e.aggregate_id, set()).add(key)
            assert fnv1a_32(e.aggregate_id.encode()) % 4 == key
        fetched += counter.fetched
        handled += counter.handled
        assert (
            backend.store.get_checkpoint(backend.connection(), f"partitioned_p{key}")
            == (positions[-1])
        )
    assert sorted(seen) == positions
    assert set(seen.values()) == {1}
    assert all(len(keys) == 1 for keys in owners.values())
    assert fetched == handled == len(positions)  # no partition fetched another's rows


def test_custom_partition_strategy_is_applied(backend: Backend) -> None:
    append_many(backend, aggregates=6, per_aggregate=2)

    class ByLastDigit:
        def should_process(self, aggregate_id: str, partition_key: int, total: int) -> bool:
            return int(aggregate_id[-1]) % total == partition_key

    seen: list[str] = []
    for key in range(2):
        projection = Recorder("custom")
        config = ProcessorConfig(
            partition_key=key, total_partitions=2, partition_strategy=ByLastDigit()
        )
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(projection)
        assert {int(e.aggregate_id[-1]) % 2 for e in projection.seen} <= {key}
        seen += [e.aggregate_id for e in projection.seen]
    assert len(seen) == 12


def test_rows_written_without_partition_hash_are_partitioned_in_python(backend: Backend) -> None:
    positions = append_many(backend, aggregates=12, per_aggregate=2)
    conn = backend.connection()
    conn.cursor().execute("UPDATE events SET partition_hash = NULL")  # as the Go library writes
    conn.commit()
    seen: Counter[int] = Counter()
    for key in range(3):
        projection = Recorder("legacy")
        config = ProcessorConfig(partition_key=key, total_partitions=3)
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(projection)
        assert all(fnv1a_32(e.aggregate_id.encode()) % 3 == key for e in projection.seen)
        seen.update(e.global_position for e in projection.seen)
    assert sorted(seen) == positions
    assert set(seen.values()) == {1}


def _jump_positions(backend: Backend, to: int) -> None:
    """Make the events table's next global position ``to`` (a sequence
    jump, as after a restore or an import)."""
    conn = backend.connection()
    cursor = conn.cursor()
    if backend.name == "sqlite":
        cursor.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (to - 1,))
    elif backend.name == "mysql":
        cursor.execute(f"ALTER TABLE events AUTO_INCREMENT = {to}")
    else:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'global_position'), %s, false)",
            (to,),
        )
    cursor.close()
    conn.commit()


def test_a_filtered_catch_up_crosses_a_huge_gap_in_positions(backend: Backend) -> None:
    """Filtered and partitioned reads scan windows of positions; a store
    whose positions jump by 10^12 must not take 10^6 empty windows (one
    query and checkpoint move each) to cross it."""
    before = append_many(backend, aggregates=3, per_aggregate=1)
    _jump_positions(backend, 10**12)
    after = append_many(backend, aggregates=3, per_aggregate=1)
    assert after[0] == 10**12
    seen: list[int] = []
    started = time.monotonic()
    for key in range(2):
        projection = Recorder("gap", aggregate_types=["Order"])
        config = ProcessorConfig(partition_key=key, total_partitions=2, batch_size=10)
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(projection)
        seen += [e.global_position for e in projection.seen]
    assert sorted(seen) == before + after
    assert time.monotonic() - started < 10


# -- running, stopping, logging -----------------------------------------------------


def test_run_follows_new_events_and_stops_promptly(backend: Backend) -> None:
    create_read_model(backend)
    projection = ReadModel(backend)
    stop = threading.Event()
    processor = backend.Processor(
        backend.connect, backend.store, ProcessorConfig(poll_interval=0.02)
    )
    errors: list[BaseException] = []

    def target() -> None:
        try:
            processor.run(projection, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    positions = append_many(backend, aggregates=2, per_aggregate=3)
    deadline = time.monotonic() + 10
    while len(projection.calls) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert projection.calls == positions
    started = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert errors == []
    processor.close()


def test_the_batch_lines_of_a_partition_name_it(backend: Backend) -> None:
    """One process may run several partitions of a projection (a
    ClaimingRunner): each batch's line says which, in its message and its
    fields, as the processor's other lines do."""
    from helpers import LogRecords

    create_read_model(backend)
    append_many(backend, aggregates=4, per_aggregate=1)
    records = LogRecords(f"partition-lines-{backend.name}-{uuid.uuid4().hex[:6]}")
    for key in range(2):
        config = ProcessorConfig(
            partition_key=key, total_partitions=2, batch_size=2, logger=records.logger
        )
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(ReadModel(backend, name="parts"))
    batches = [r for r in records.records if r.levelno == logging.INFO]
    assert batches
    for record in batches:
        key = record.partition  # type: ignore[attr-defined]
        assert record.getMessage().startswith(f"projection parts (partition {key} of 2) handled ")
        assert record.total_partitions == 2  # type: ignore[attr-defined]
        assert record.projection == "parts"  # type: ignore[attr-defined]
        assert record.checkpoint_name == f"parts_p{key}"  # type: ignore[attr-defined]
        assert {"handled", "checkpoint", "fetched"} <= vars(record).keys()
    assert {r.partition for r in batches} == {0, 1}  # type: ignore[attr-defined]
    for record in records.records:
        if record.levelno == logging.DEBUG and "checkpoint" in record.getMessage():
            assert "(partition " in record.getMessage(), record.getMessage()


def test_logging(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    create_read_model(backend)
    positions = append_many(backend, aggregates=1, per_aggregate=3)
    projection = ReadModel(backend)
    with (
        caplog.at_level(logging.DEBUG, logger="pupsourcing"),
        backend.Processor(backend.connect, backend.store) as processor,
    ):
        processor.catch_up(projection)
    infos = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "pupsourcing"]
    assert len(infos) == 1
    assert "handled 3 events" in infos[0].getMessage()
    assert str(positions[-1]) in infos[0].getMessage()

    append_many(backend, aggregates=1, per_aggregate=1)
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="pupsourcing"),
        backend.Processor(backend.connect, backend.store) as processor,
    ):
        processor.catch_up(projection)
    [one] = [r for r in caplog.records if r.levelno == logging.INFO and r.name == "pupsourcing"]
    assert "handled 1 event," in one.getMessage(), one.getMessage()
    assert not any(
        r.levelno > logging.DEBUG
        and "global position" in r.getMessage()
        and r.levelno != logging.ERROR
        for r in caplog.records
    )

    caplog.clear()
    more = append_many(backend, aggregates=1, per_aggregate=1)
    projection.fail_at = more[0]
    with (
        caplog.at_level(logging.INFO, logger="pupsourcing"),
        backend.Processor(backend.connect, backend.store) as processor,
        pytest.raises(ProjectionError),
    ):
        processor.catch_up(projection)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(more[0]) in errors[0].getMessage()


# -- runner ---------------------------------------------------------------------


def test_runner_runs_projections_concurrently(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pupsourcing")
    positions = append_many(backend, aggregates=3, per_aggregate=5)
    first, second = Recorder("first"), Recorder("second")
    stop = threading.Event()
    processors = [
        backend.Processor(backend.connect, backend.store, ProcessorConfig(poll_interval=0.01))
        for _ in range(2)
    ]
    runner_thread = threading.Thread(
        target=backend.Runner().run,
        args=([ProjectionRunner(first, processors[0]), ProjectionRunner(second, processors[1])],),
        kwargs={"stop": stop},
    )
    runner_thread.start()
    deadline = time.monotonic() + 10
    while (len(first.seen) < 15 or len(second.seen) < 15) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    runner_thread.join(5)
    assert not runner_thread.is_alive()
    assert [e.global_position for e in first.seen] == positions
    assert [e.global_position for e in second.seen] == positions
    # Different projections never contend for a checkpoint (no retried batches).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    for processor in processors:
        processor.close()


def test_runner_stops_everything_on_the_first_failure(backend: Backend) -> None:
    append_many(backend, aggregates=1, per_aggregate=3)

    class Failing(Recorder):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            raise ValueError("cannot")

    healthy = Recorder("healthy")
    processors = [
        backend.Processor(backend.connect, backend.store, ProcessorConfig(poll_interval=0.01))
        for _ in range(2)
    ]
    with pytest.raises(ProjectionError) as caught:
        backend.Runner().run(
            [
                ProjectionRunner(healthy, processors[0]),
                ProjectionRunner(Failing("failing"), processors[1]),
            ]
        )
    assert caught.value.projection == "failing"
    assert isinstance(caught.value.__cause__, ValueError)
    for processor in processors:
        processor.close()


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), "0.1"])
def test_runner_refuses_a_bad_poll_interval(interval: Any) -> None:
    from pupsourcing.runner import Runner

    with pytest.raises(ValueError, match="poll_interval"):
        Runner(poll_interval=interval)


def test_runner_with_stop_already_set_handles_nothing(backend: Backend) -> None:
    """As ``Processor.run`` does: ``stop`` set before the run ends it at once."""
    append_many(backend, aggregates=2, per_aggregate=3)
    recorders = [Recorder("first"), Recorder("second")]
    processors = [backend.Processor(backend.connect, backend.store) for _ in recorders]
    stop = threading.Event()
    stop.set()
    backend.Runner().run(
        [ProjectionRunner(r, p) for r, p in zip(recorders, processors, strict=True)], stop=stop
    )
    assert [r.seen for r in recorders] == [[], []]
    assert backend.checkpoints() == {}
    for processor in processors:
        processor.close()


INTERRUPTED_TWICE = """\
import os, signal, sqlite3, sys, threading, time
from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor
from pupsourcing.runner import ProjectionRunner, Runner

path, store = sys.argv[1], SQLiteStore()
conn = sqlite3.connect(path)
store.create_schema(conn)
store.append(conn, ExpectedVersion.any(), [Event("c", "T", "a", "E", b"{}")])
conn.commit()
conn.close()
entered = threading.Event()

class Slow:
    name = "slow"

    def handle(self, event, tx):
        entered.set()
        time.sleep(1.5)

def ctrl_c_twice():
    entered.wait()
    for _ in range(2):  # the second while the runner waits for the batch
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)

threading.Thread(target=ctrl_c_twice, daemon=True).start()
connect = lambda: sqlite3.connect(path, check_same_thread=False)
with Processor(connect, store) as processor:
    try:
        Runner().run([ProjectionRunner(Slow(), processor)])
    except KeyboardInterrupt:
        alive = [t.is_alive() for t in threading.enumerate() if t.name == "pupsourcing-slow"]
        print("interrupted; the projection's thread alive:", alive, flush=True)
"""


def test_runner_interrupted_twice_raises_and_the_batch_still_commits(tmp_path: Path) -> None:
    """A second Ctrl-C while the runner waits for the batch in progress
    propagates at once; the batch goes on in its thread, which the program's
    exit waits for, as for any thread. (``Thread.join`` interrupted marks the
    thread ended on Python < 3.13, and the exit killed the batch.)"""
    db = tmp_path / "store.db"
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_TWICE, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "interrupted; the projection's thread alive: [True]\n"
    conn = sqlite3.connect(db)
    assert conn.execute(
        "SELECT projection_name, last_global_position FROM projection_checkpoints"
    ).fetchall() == [("slow", 1)]
    conn.close()


def test_runner_interrupted_while_starting_stops_what_it_started(
    sqlite_db: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the runner starts its threads: the ones already started
    are stopped and waited for (they ran on, and the program could not exit)."""
    from pupsourcing.projection import Processor
    from pupsourcing.runner import Runner

    class Ends(Recorder):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            raise RuntimeError("an event ends the projection")

    start, starts = threading.Thread.start, []

    def interrupted_start(thread: threading.Thread) -> None:
        starts.append(thread)
        if len(starts) == 2:
            raise KeyboardInterrupt
        start(thread)

    config = ProcessorConfig(poll_interval=0.01)
    runners = [
        ProjectionRunner(Ends(name), Processor(sqlite_db.connect, sqlite_db.store, config))
        for name in ("first", "second")
    ]
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    try:
        with pytest.raises(KeyboardInterrupt):
            Runner().run(runners)
    finally:
        monkeypatch.undo()
        left = [t for t in threading.enumerate() if t.name == "pupsourcing-first"]
        append_many(sqlite_db, aggregates=1, per_aggregate=1)  # ends a thread left running
        for thread in left:
            thread.join(10)
        for runner in runners:
            runner.processor.close()
    assert left == []


def test_runner_needs_projections_and_distinct_processors(backend: Backend) -> None:
    with pytest.raises(NoProjectionsError):
        backend.Runner().run([])
    assert issubclass(NoProjectionsError, ValueError)
    processor = backend.Processor(backend.connect, backend.store)
    with pytest.raises(ValueError, match="own Processor"):
        backend.Runner().run(
            [ProjectionRunner(Recorder("a"), processor), ProjectionRunner(Recorder("b"), processor)]
        )


# -- concurrent processors of one projection -----------------------------------------


def test_two_processors_of_one_projection_still_apply_each_event_once(backend: Backend) -> None:
    create_read_model(backend)
    positions = append_many(backend, aggregates=10, per_aggregate=10)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with backend.Processor(
                backend.connect, backend.store, ProcessorConfig(batch_size=7)
            ) as p:
                p.catch_up(ReadModel(backend))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A processor that loses the checkpoint race rolls back and carries on,
    # also when its writes clashed with the winner's first (the primary key
    # raising inside its batch); it never leaves a duplicate row.
    assert errors == []
    assert read_model_positions(backend) == positions


def test_a_processor_whose_writes_clash_with_the_winners_carries_on(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Two claiming workers overlap briefly while a lease changes hands: the
    loser's INSERT meets the winner's row (waiting for its commit on
    PostgreSQL and MySQL) and raises; the checkpoint has moved, so the batch
    is contended, not a failure: no ProjectionError, nothing dead-lettered."""
    create_read_model(backend)
    positions = append_many(backend, aggregates=1, per_aggregate=3)
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    class Holding(ReadModel):
        def handle(self, event: PersistedEvent, tx: Any) -> None:
            super().handle(event, tx)
            if event.global_position == positions[-1]:
                holding.set()
                release.wait(10)

    def winner() -> None:
        try:
            with backend.Processor(backend.connect, backend.store) as p:
                p.catch_up(Holding(backend))
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=winner)
    first.start()
    assert holding.wait(10), "the first processor never reached its last event"
    timer = threading.Timer(0.5, release.set)
    timer.start()
    config = ProcessorConfig(on_failure="dead_letter")
    try:
        with (
            caplog.at_level(logging.WARNING),
            backend.Processor(backend.connect, backend.store, config) as loser,
        ):
            assert loser.catch_up(ReadModel(backend)) == 0
    finally:
        release.set()
        timer.cancel()
        first.join(10)
    assert errors == []
    assert read_model_positions(backend) == positions
    assert backend.checkpoints()["read_model"] == positions[-1]
    conn = backend.connection()
    assert backend.store.list_dead_letters(conn) == []


def test_checkpoint_compare_and_set(backend: Backend) -> None:
    store, conn = backend.store, backend.connection()
    dialect = store.dialect
    assert store._run(conn, dialect.load_checkpoint("p")) == 0  # creates the row at 0
    assert store._run(conn, dialect.load_checkpoint("p")) == 0  # and leaves it alone
    assert store._run(conn, dialect.advance_checkpoint("p", 0, 5)) is True
    assert store._run(conn, dialect.advance_checkpoint("p", 5, 9)) is True
    assert store._run(conn, dialect.advance_checkpoint("p", 5, 12)) is False  # moved away
    assert store._run(conn, dialect.advance_checkpoint("gone", 0, 3)) is False  # no row
    conn.commit()
    assert store.get_checkpoint(backend.connection(), "p") == 9
    assert store.get_checkpoint(backend.connection(), "gone") == 0


def _dialects() -> list[Any]:
    from pupsourcing.adapters.mysql import MySQLStore
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.adapters.sqlite import SQLiteStore

    return [PostgresStore().dialect, MySQLStore().dialect, SQLiteStore().dialect]


@pytest.mark.parametrize("dialect", _dialects(), ids=lambda d: d.name)
def test_a_dialect_says_it_reads_with_the_advance_exactly_when_it_does(dialect: Any) -> None:
    """The processor builds the next batch's read for the compare-and-set
    only where the dialect's ``advance_and_read`` runs it: an override that
    forgot the flag would never read ahead."""
    from pupsourcing.store.dialect import Dialect

    overrides = type(dialect).advance_and_read is not Dialect.advance_and_read
    assert dialect.reads_with_advance is overrides


@pytest.mark.parametrize("dialect", _dialects(), ids=lambda d: d.name)
def test_fetch_statements_of_one_shape_share_their_sql(dialect: Any) -> None:
    """The SQL is built once per shape of the arguments; the parameters are
    each call's own, and another shape gets SQL of its own."""
    first = dialect.fetch_statement(5, 10, 100, ("A", "B"), ("C",), (1, 4), with_hash=True)
    second = dialect.fetch_statement(7, 20, 50, ("X", "Y"), ("Z",), (1, 4), with_hash=True)
    assert first.sql == second.sql
    assert list(first.params) == [5, 10, "A", "B", "C", 100]
    assert list(second.params) == [7, 20, "X", "Y", "Z", 50]
    assert first.sql.count(dialect.placeholder) == 6
    assert (first.fetch, first.chunked) == (True, True)
    other = dialect.fetch_statement(5, None, 100, (), (), (2, 4))
    assert list(other.params) == [5, 100]
    assert other.sql.count(dialect.placeholder) == 2
    assert "partition_hash % 4 = 2" in other.sql.replace("%%", "%")
    assert "partition_hash % 4 = 1" in first.sql.replace("%%", "%")
    assert ", partition_hash FROM" not in other.sql
    plain = dialect.fetch_statement(0, None, 10, (), (), None)
    assert "partition_hash" not in plain.sql
    assert "global_position <=" not in plain.sql
