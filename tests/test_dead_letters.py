"""The failure policy (API.md section 7): a batch whose handler raises is
tried ``max_attempts`` times; then ``"stop"`` raises as before and
``"dead_letter"`` sets the failing event aside in the dead-letters table and
goes on. Every database, both APIs."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest

from conftest import BACKENDS, SERVERS, Backend, backends_and_apis
from helpers import LogRecords, event, query
from pupsourcing import ExpectedVersion, ProjectionError
from pupsourcing.projection import DeadLetter, HashPartitionStrategy, ProcessorConfig
from pupsourcing.store import StoreConfig

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest

READ_MODEL = "dl_read_model"


class Poisoned:
    """Writes one read-model row per event through ``tx``; events of type
    ``Poison`` write theirs and then raise, until ``fixed``."""

    def __init__(self, backend: Backend, name: str = "poisoned", **config: Any) -> None:
        self.name = name
        self.fixed = False
        self.calls: dict[int, int] = {}
        self.marker = "?" if backend.name == "sqlite" else "%s"

    def handle(self, e: Any, tx: Any) -> None:
        self.calls[e.global_position] = self.calls.get(e.global_position, 0) + 1
        cursor = tx.cursor()
        try:
            cursor.execute(
                f"INSERT INTO {READ_MODEL} (name, position) VALUES ({self.marker}, {self.marker})",
                (self.name, e.global_position),
            )
        finally:
            cursor.close()
        if e.event_type == "Poison" and not self.fixed:
            raise ValueError(f"cannot digest {e.global_position}")


def setup(backend: Backend, types: list[str], aggregate: str = "a") -> list[int]:
    """The read-model table and one event per type; their positions."""
    conn = backend.connection()
    query(conn, f"CREATE TABLE {READ_MODEL} (name VARCHAR(100), position BIGINT)")
    result = backend.store.append(
        conn,
        ExpectedVersion.any(),
        [event(aggregate, t, data={"i": i}) for i, t in enumerate(types)],
    )
    conn.commit()
    return list(result.global_positions)


def read_model(backend: Backend, name: str = "poisoned") -> list[int]:
    conn = backend.connection()
    marker = "?" if backend.name == "sqlite" else "%s"
    rows = query(
        conn, f"SELECT position FROM {READ_MODEL} WHERE name = {marker} ORDER BY 1", (name,)
    )
    conn.rollback()
    return [int(r[0]) for r in rows]


def dead_letters(backend: Backend, name: str | None = None) -> list[DeadLetter]:
    conn = backend.connection()
    letters: list[DeadLetter] = backend.store.list_dead_letters(conn, name)
    conn.rollback()
    return letters


def test_processor_config_validates_the_failure_policy() -> None:
    assert ProcessorConfig().max_attempts == 1
    assert ProcessorConfig().on_failure == "stop"
    for bad in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="max_attempts"):
            ProcessorConfig(max_attempts=bad)  # type: ignore[arg-type]
    for bad in ("skip", "", None, "STOP"):
        with pytest.raises(ValueError, match=r"on_failure.*'stop', 'dead_letter'"):
            ProcessorConfig(on_failure=bad)  # type: ignore[arg-type]
    assert ProcessorConfig(max_attempts=3, on_failure="dead_letter").max_attempts == 3


def test_store_config_names_the_dead_letters_table() -> None:
    assert StoreConfig().dead_letters_table == "projection_dead_letters"
    with pytest.raises(ValueError, match="dead_letters_table"):
        StoreConfig(dead_letters_table="bad-name")
    with pytest.raises(ValueError, match="distinct"):
        StoreConfig(dead_letters_table="events")


def test_poison_event_is_retried_then_dead_lettered(backend: Backend) -> None:
    positions = setup(backend, ["Ok", "Ok", "Poison", "Ok", "Ok"])
    poison = positions[2]
    projection = Poisoned(backend)
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(max_attempts=3, on_failure="dead_letter", logger=logs.logger)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(projection) == 4

    assert projection.calls[poison] == 3
    # The failed attempts left nothing behind; the events around it are handled once.
    assert read_model(backend) == [p for p in positions if p != poison]
    assert backend.checkpoints() == {"poisoned": positions[-1]}
    [letter] = dead_letters(backend)
    assert letter.projection_name == "poisoned"
    assert letter.global_position == poison
    conn = backend.connection()
    [stored] = backend.store.read_events(conn, poison - 1, 1)
    conn.rollback()
    assert letter.event_id == stored.event_id
    assert letter.error_type == "ValueError"
    assert letter.message == f"cannot digest {poison}"
    assert "Traceback" in letter.traceback
    assert f"ValueError: cannot digest {poison}" in letter.traceback
    assert letter.attempts == 3
    assert letter.failed_at is not None
    assert letter.failed_at.tzinfo is not None
    warnings = logs.messages(30)
    assert sum("attempt 1 of 3" in m or "attempt 2 of 3" in m for m in warnings) == 2
    assert any("dead letter" in m for m in logs.messages(40))


def test_stop_policy_raises_after_its_attempts(backend: Backend) -> None:
    positions = setup(backend, ["Ok", "Poison", "Ok"])
    projection = Poisoned(backend)
    with (
        backend.Processor(backend.connect, backend.store) as processor,
        pytest.raises(ProjectionError) as raised,
    ):
        processor.catch_up(projection)
    assert raised.value.global_position == positions[1]
    assert isinstance(raised.value.__cause__, ValueError)
    assert projection.calls[positions[1]] == 1
    assert read_model(backend) == []
    assert backend.checkpoints() == {"poisoned": 0}
    assert dead_letters(backend) == []

    retried = Poisoned(backend)
    config = ProcessorConfig(max_attempts=2)
    with (
        backend.Processor(backend.connect, backend.store, config) as processor,
        pytest.raises(ProjectionError),
    ):
        processor.catch_up(retried)
    assert retried.calls[positions[1]] == 2
    assert read_model(backend) == []
    assert dead_letters(backend) == []


def test_replay_after_fixing_the_handler(backend: Backend) -> None:
    positions = setup(backend, ["Poison", "Ok", "Poison", "Ok"])
    projection = Poisoned(backend)
    config = ProcessorConfig(max_attempts=1, on_failure="dead_letter", batch_size=2)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(projection) == 2
        assert [d.global_position for d in dead_letters(backend)] == [positions[0], positions[2]]

        # Still broken: nothing replayed, each record counts one more attempt.
        assert processor.replay_dead_letters(projection) == 0
        assert [d.attempts for d in dead_letters(backend)] == [2, 2]
        assert read_model(backend) == [positions[1], positions[3]]

        projection.fixed = True
        assert processor.replay_dead_letters(projection) == 2
        assert processor.replay_dead_letters(projection) == 0
    assert dead_letters(backend) == []
    assert read_model(backend) == positions
    assert backend.checkpoints() == {"poisoned": positions[-1]}


class SlowToReplay(Poisoned):
    """Holds the replay of its first fixed event until ``go`` is set."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.inside = threading.Event()
        self.go = threading.Event()

    def handle(self, e: Any, tx: Any) -> None:
        super().handle(e, tx)
        if self.fixed and not self.inside.is_set():
            self.inside.set()
            self.go.wait(10)


@pytest.mark.parametrize("backend", backends_and_apis(BACKENDS, ["sync"]), indirect=True)
def test_replays_at_the_same_time_handle_a_dead_letter_once(backend: Backend) -> None:
    # Two operators replaying one projection at once: the second waits for
    # the first's transaction, then finds the record gone.
    positions = setup(backend, ["Ok", "Poison"])
    projection = SlowToReplay(backend)
    config = ProcessorConfig(on_failure="dead_letter")
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(projection) == 1
    projection.fixed = True
    replayed: dict[str, int] = {}

    def replay(who: str) -> None:
        with backend.Processor(backend.connect, backend.store, config) as processor:
            replayed[who] = processor.replay_dead_letters(projection)

    first = threading.Thread(target=replay, args=("first",))
    first.start()
    assert projection.inside.wait(10)
    second = threading.Thread(target=replay, args=("second",))
    second.start()
    second.join(0.5)  # it lists the record, then waits on the first's lock
    projection.go.set()
    first.join(10)
    second.join(10)
    assert replayed == {"first": 1, "second": 0}
    assert read_model(backend) == positions
    assert dead_letters(backend) == []


def test_list_filters_by_projection_and_partitions(backend: Backend) -> None:
    strategy = HashPartitionStrategy()
    ids = [f"agg-{i}" for i in range(40)]
    in_p0 = next(i for i in ids if strategy.should_process(i, 0, 2))
    in_p1 = next(i for i in ids if strategy.should_process(i, 1, 2))
    conn = backend.connection()
    query(conn, f"CREATE TABLE {READ_MODEL} (name VARCHAR(100), position BIGINT)")
    for aggregate in (in_p0, in_p1):
        backend.store.append(
            conn, ExpectedVersion.any(), [event(aggregate, "Poison"), event(aggregate, "Ok")]
        )
    conn.commit()

    for key in (0, 1):
        config = ProcessorConfig(partition_key=key, total_partitions=2, on_failure="dead_letter")
        with backend.Processor(backend.connect, backend.store, config) as processor:
            assert processor.catch_up(Poisoned(backend, "parts")) == 1
    with backend.Processor(
        backend.connect, backend.store, ProcessorConfig(on_failure="dead_letter")
    ) as processor:
        assert processor.catch_up(Poisoned(backend, "parts_p")) == 2  # a lookalike name

    names = [d.projection_name for d in dead_letters(backend)]
    assert names == ["parts_p", "parts_p", "parts_p0", "parts_p1"]
    assert [d.projection_name for d in dead_letters(backend, "parts")] == ["parts_p0", "parts_p1"]
    assert [d.projection_name for d in dead_letters(backend, "parts_p")] == ["parts_p"] * 2
    assert dead_letters(backend, "part") == []
    assert dead_letters(backend, "parts_p0") == [dead_letters(backend, "parts")[0]]
    counting = backend.connection()
    assert backend.store.count_dead_letters(counting) == {
        "parts_p": 2,
        "parts_p0": 1,
        "parts_p1": 1,
    }

    # A partition's processor replays its own partition's records only.
    fixed = Poisoned(backend, "parts")
    fixed.fixed = True
    config = ProcessorConfig(partition_key=1, total_partitions=2)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.replay_dead_letters(fixed) == 1
    assert [d.projection_name for d in dead_letters(backend, "parts")] == ["parts_p0"]


@pytest.mark.parametrize("backend", backends_and_apis(BACKENDS, ["sync"]), indirect=True)
def test_list_the_first_dead_letters(backend: Backend) -> None:
    """A limited list is the first of the full one, also when names that
    only look like a partition's ("orders_p0x") come between its pages."""
    conn = backend.connection()
    store = backend.store
    positions = backend.store.append(
        conn, ExpectedVersion.any(), [event("a", "Poison") for _ in range(6)]
    ).global_positions
    for name, index in [
        ("orders", 0),
        ("orders_p0", 1),
        ("orders_p0x", 2),
        ("orders_p0x", 3),
        ("orders_p0x", 4),
        ("orders_p1", 5),
    ]:
        error = RuntimeError(f"failed at {index}")
        store._run(conn, store.dialect.record_dead_letter(name, positions[index], error, 1))
    conn.commit()

    def listed(name: str | None, limit: int | None) -> list[tuple[str, int]]:
        found = store.list_dead_letters(conn, name, limit=limit)
        return [(d.projection_name, d.global_position) for d in found]

    for name in (None, "orders", "orders_p0x"):
        every = listed(name, None)
        assert every, name
        for limit in range(1, len(every) + 2):
            assert listed(name, limit) == every[:limit], (name, limit)
    assert [n for n, _ in listed("orders", 3)] == ["orders", "orders_p0", "orders_p1"]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="limit"):
            store.list_dead_letters(conn, "orders", limit=bad)


def test_bad_projection_name_is_refused(backend: Backend) -> None:
    conn = backend.connection()
    with pytest.raises(ValueError, match="projection_name"):
        backend.store.list_dead_letters(conn, "")
    with pytest.raises(TypeError, match="projection_name"):
        backend.store.list_dead_letters(conn, 3)
    conn.rollback()


@pytest.mark.parametrize("adapter", ["postgres", "mysql", "sqlite"])
def test_the_schema_only_adds_the_dead_letters_table(adapter: str) -> None:
    from pupsourcing.adapters import _registry as registry

    dialect = registry.adapter(adapter).store_class.dialect_class
    config = StoreConfig(dead_letters_table="dl_only_here")
    statements = [sql for _, sql in dialect.schema(config)]
    mine = [sql for sql in statements if "dl_only_here" in sql]
    assert len(mine) == 1
    assert mine[0].startswith(f"CREATE TABLE IF NOT EXISTS {dialect.quote('dl_only_here')} (")
    # The Go library's tables come first and are what they were without it.
    assert statements.index(mine[0]) > max(
        i for i, sql in enumerate(statements) if config.checkpoints_table in sql
    )


def test_create_schema_is_idempotent_with_the_dead_letters_table(backend: Backend) -> None:
    conn = backend.connection()
    backend.store.create_schema(conn)
    backend.store.create_schema(conn)
    conn.commit()
    assert backend.store.list_dead_letters(conn) == []
    assert backend.store.count_dead_letters(conn) == {}
    conn.rollback()


def _failure_lines(logs: LogRecords, position: int) -> list[logging.LogRecord]:
    return [r for r in logs.records if f"global position {position}" in r.getMessage()]


def test_a_retried_attempt_is_a_warning_and_the_outcome_one_error(backend: Backend) -> None:
    """One poisoned event, two attempts, then a dead letter: a line per
    attempt (WARNING, naming the attempt), and one ERROR for the outcome with
    the handler's traceback; no traceback on the attempts that were retried."""
    positions = setup(backend, ["Ok", "Poison", "Ok"])
    poison = positions[1]
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(max_attempts=2, on_failure="dead_letter", logger=logs.logger)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(Poisoned(backend)) == 2
    lines = _failure_lines(logs, poison)
    errors = [r for r in lines if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    [error] = errors
    assert "dead letter" in error.getMessage()
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], ValueError)
    warnings = [r for r in lines if r.levelno == logging.WARNING]
    assert ["attempt 1 of 2" in r.getMessage() for r in warnings] == [True, False]
    assert "attempt 2 of 2" in warnings[1].getMessage()
    assert all(r.exc_info is None for r in warnings)
    for record in lines:
        assert "poisoned" in record.getMessage()
        assert record.__dict__["projection"] == "poisoned"
        assert record.__dict__["global_position"] == poison
        assert record.__dict__["max_attempts"] == 2


def test_the_stop_policy_logs_one_error_for_its_last_attempt(backend: Backend) -> None:
    positions = setup(backend, ["Ok", "Poison", "Ok"])
    poison = positions[1]
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(
        max_attempts=2, total_partitions=2, partition_key=_partition_of("a"), logger=logs.logger
    )
    with (
        backend.Processor(backend.connect, backend.store, config) as processor,
        pytest.raises(ProjectionError),
    ):
        processor.catch_up(Poisoned(backend))
    lines = _failure_lines(logs, poison)
    [warning] = [r for r in lines if r.levelno == logging.WARNING]
    assert "attempt 1 of 2" in warning.getMessage()
    assert warning.exc_info is None
    [error] = [r for r in lines if r.levelno >= logging.ERROR]
    message = error.getMessage()
    assert "attempt 2 of 2" in message
    assert "checkpoint stays at 0" in message  # the batch began with the first event
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], ValueError)
    for record in lines:  # which partition failed
        assert f"poisoned (partition {config.partition_key} of 2)" in record.getMessage()
        assert record.__dict__["checkpoint_name"] == f"poisoned_p{config.partition_key}"
        assert record.__dict__["partition"] == config.partition_key


def _partition_of(aggregate_id: str) -> int:
    strategy = HashPartitionStrategy()
    return next(k for k in range(2) if strategy.should_process(aggregate_id, k, 2))


class BadSQL:
    """A handler whose SQL the database refuses: a driver error quoting it."""

    name = "bad_sql"

    def handle(self, e: Any, tx: Any) -> None:
        cursor = tx.cursor()
        try:
            cursor.execute("SELEC 1")
        finally:
            cursor.close()


@pytest.mark.parametrize("backend", backends_and_apis(SERVERS), indirect=True)
def test_a_driver_error_of_the_handler_is_logged_as_the_cli_reports_it(backend: Backend) -> None:
    """The attempt's line gives the driver's message as the CLI does: without
    PostgreSQL's quoted SQL (``LINE 1:`` and its ``^`` marker), MySQL's error
    number after the message."""
    setup(backend, ["Ok"])
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(max_attempts=2, on_failure="dead_letter", logger=logs.logger)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        processor.catch_up(BadSQL())
    [first, _] = [m for m in logs.messages(logging.WARNING) if "attempt" in m]
    assert "attempt 1 of 2" in first
    assert "LINE 1" not in first
    assert "^" not in first
    assert "SELEC" in first
    if backend.name == "postgres":
        assert 'syntax error at or near "SELEC";' in first, first
    else:
        assert "You have an error in your SQL syntax" in first
        assert "(MySQL error 1064);" in first, first


@pytest.mark.parametrize("backend", backends_and_apis(BACKENDS, ["sync"]), indirect=True)
def test_the_dead_letter_line_gives_the_configured_max_attempts(backend: Backend) -> None:
    """``max_attempts`` on the dead letter's line is the configuration's, not
    the count of attempts. (The two are equal on every path the processor
    takes; the failing event's state is set here so that they differ.)"""
    from pupsourcing.projection.failures import Failing

    positions = setup(backend, ["Ok", "Poison", "Ok"])
    poison = positions[1]
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(max_attempts=3, on_failure="dead_letter", logger=logs.logger)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        failing = Failing(poison, ValueError("set aside early"), attempts=1, due=True)
        processor._core._failing["poisoned"] = failing
        assert processor.catch_up(Poisoned(backend)) == 2
    [error] = [r for r in _failure_lines(logs, poison) if r.levelno == logging.ERROR]
    assert "failed 1 time" in error.getMessage()
    assert error.__dict__["attempts"] == 1
    assert error.__dict__["max_attempts"] == 3


def test_replay_lines_name_the_partition(backend: Backend) -> None:
    """Replaying a partition's dead letters, each line names the partition
    and carries its fields, as the processor's other lines do."""
    positions = setup(backend, ["Poison", "Poison"])
    key = _partition_of("a")
    logs = LogRecords(f"test.dead_letters.{uuid.uuid4().hex}")
    config = ProcessorConfig(
        on_failure="dead_letter", total_partitions=2, partition_key=key, logger=logs.logger
    )
    projection = Poisoned(backend)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(projection) == 0
        logs.records.clear()
        assert processor.replay_dead_letters(projection) == 0  # still failing: kept
        projection.fixed = True
        assert processor.replay_dead_letters(projection) == 2
    lines = [r for r in logs.records if "dead letter at global position" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2 + [logging.INFO] * 2
    for record, position in zip(lines, positions * 2, strict=True):
        assert record.getMessage().startswith(f"projection poisoned (partition {key} of 2): ")
        fields = {
            "projection": "poisoned",
            "checkpoint_name": f"poisoned_p{key}",
            "partition": key,
            "total_partitions": 2,
            "global_position": position,
        }
        assert {f: record.__dict__.get(f) for f in fields} == fields
