"""The partition layout guard (API.md section 7): a projection's partition
count is recorded with its checkpoints, and a processor started with another
``total_partitions`` raises :class:`PartitionLayoutError` before it handles
anything. Every database, both APIs."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

from conftest import Backend
from helpers import event, query
from pupsourcing import ExpectedVersion, PartitionLayoutError, ProjectionError
from pupsourcing.projection import ProcessorConfig
from pupsourcing.store.layout import clear_layout, inferred_layout

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


class Recorder:
    def __init__(self, name: str = "layout") -> None:
        self.name = name
        self.handled: list[int] = []

    def handle(self, e: Any, tx: Any) -> None:
        self.handled.append(e.global_position)


def append(backend: Backend, count: int = 12) -> None:
    conn = backend.connection()
    for i in range(count):
        backend.store.append(conn, ExpectedVersion.any(), [event(f"agg-{i}", "Happened")])
    conn.commit()


def catch_up(backend: Backend, projection: Recorder, total: int, key: int = 0) -> int:
    config = ProcessorConfig(partition_key=key, total_partitions=total)
    with backend.Processor(backend.connect, backend.store, config) as processor:
        return int(processor.catch_up(projection))


def run_all(backend: Backend, projection: Recorder, total: int) -> int:
    return sum(catch_up(backend, projection, total, key) for key in range(total))


def layouts(backend: Backend) -> dict[str, int]:
    conn = backend.connection()
    rows = query(
        conn, f"SELECT projection_name, total_partitions FROM {backend.store.config.layouts_table}"
    )
    conn.rollback()
    return {name: int(total) for name, total in rows}


def test_another_partition_count_is_refused_before_any_event(backend: Backend) -> None:
    append(backend)
    first = Recorder()
    assert run_all(backend, first, 2) == 12
    assert layouts(backend) == {"layout": 2}
    before = backend.checkpoints()
    assert set(before) == {"layout_p0", "layout_p1"}

    append(backend, 3)
    second = Recorder()
    with pytest.raises(PartitionLayoutError) as caught:
        catch_up(backend, second, 4, key=3)
    error = caught.value
    assert isinstance(error, ProjectionError)
    assert (error.projection, error.recorded, error.requested) == ("layout", 2, 4)
    message = str(error)
    assert "total_partitions=2" in message
    assert "total_partitions=4" in message
    assert "pupsourcing projections reset layout" in message
    assert second.handled == []
    assert backend.checkpoints() == before  # not even partition 3's row was created
    assert layouts(backend) == {"layout": 2}

    # The recorded count still runs, and picks up the new events.
    assert run_all(backend, Recorder(), 2) == 3


def test_unpartitioned_then_partitioned_is_refused_and_back(backend: Backend) -> None:
    append(backend, 4)
    assert catch_up(backend, Recorder(), 1) == 4
    with pytest.raises(PartitionLayoutError, match="no partitions") as caught:
        catch_up(backend, Recorder(), 3, key=1)
    assert (caught.value.recorded, caught.value.requested) == (1, 3)
    assert backend.checkpoints() == {"layout": 4}

    # And partitioned first, unpartitioned later.
    assert run_all(backend, Recorder("other"), 2) == 4
    with pytest.raises(PartitionLayoutError) as caught:
        catch_up(backend, Recorder("other"), 1)
    assert (caught.value.recorded, caught.value.requested) == (2, 1)


def test_run_raises_it_too_without_retrying(backend: Backend) -> None:
    append(backend, 2)
    assert catch_up(backend, Recorder(), 1) == 2
    projection = Recorder()
    config = ProcessorConfig(total_partitions=2, partition_key=0, max_attempts=5)
    with (
        backend.Processor(backend.connect, backend.store, config) as processor,
        pytest.raises(PartitionLayoutError),
    ):
        processor.run(projection, stop=threading.Event())
    assert projection.handled == []


def test_cleared_layout_allows_a_new_count(backend: Backend) -> None:
    append(backend, 6)
    assert run_all(backend, Recorder(), 2) == 6
    # What `pupsourcing projections reset` does: the checkpoints back to 0,
    # the layout forgotten.
    conn = backend.connect()
    try:
        for name in backend.checkpoints():
            backend.store.update_checkpoint(conn, name, 0)
        conn.commit()
        plain = backend.store if backend.api == "sync" else None
        if plain is not None:
            assert plain._run(conn, clear_layout(plain.dialect, "layout")) is True
        else:
            query(conn, f"DELETE FROM {backend.store.config.layouts_table}")
            conn.commit()
    finally:
        conn.close()
    assert layouts(backend) == {}
    rebuilt = Recorder()
    assert run_all(backend, rebuilt, 4) == 6
    assert sorted(rebuilt.handled) == sorted(set(rebuilt.handled))
    assert layouts(backend) == {"layout": 4}


def test_a_new_count_drops_the_old_layouts_reset_checkpoints(backend: Backend) -> None:
    """After a reset, the first start with another count forgets the
    checkpoints the old count left at 0 (``projections status`` would show
    them lagging by the whole store forever), and keeps the others'."""
    append(backend, 6)
    assert run_all(backend, Recorder(), 2) == 6
    assert catch_up(backend, Recorder("layout_p2"), 1) == 6  # a projection of its own
    conn = backend.connect()
    try:
        for name in ("layout_p0", "layout_p1"):
            backend.store.update_checkpoint(conn, name, 0)
        query(
            conn,
            f"DELETE FROM {backend.store.config.layouts_table} WHERE projection_name = 'layout'",
        )
        conn.commit()
    finally:
        conn.close()
    assert catch_up(backend, Recorder(), 1) == 6
    assert backend.checkpoints() == {"layout": 6, "layout_p2": 6}
    assert layouts(backend) == {"layout": 1, "layout_p2": 1}


def test_concurrent_first_starts_of_one_layout(backend: Backend) -> None:
    append(backend, 20)
    errors: list[BaseException] = []
    handled: list[int] = []

    def start(key: int) -> None:
        try:
            handled.append(catch_up(backend, Recorder("together"), 4, key))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(key,)) for key in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(handled) == 20
    assert layouts(backend) == {"together": 4}


def test_old_checkpoints_without_a_record_are_read_by_name(backend: Backend) -> None:
    """A store whose checkpoints predate the layouts table: their names tell
    the count where they can."""
    append(backend, 3)
    conn = backend.connect()
    try:
        for name, position in (("old_p0", 2), ("old_p1", 3), ("plain", 3), ("fresh_p5", 0)):
            backend.store.update_checkpoint(conn, name, position)
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(PartitionLayoutError) as caught:
        catch_up(backend, Recorder("old"), 1)
    assert (caught.value.recorded, caught.value.requested) == (2, 1)
    with pytest.raises(PartitionLayoutError):
        catch_up(backend, Recorder("plain"), 2)
    assert layouts(backend) == {}  # a refused start records nothing
    catch_up(backend, Recorder("old"), 2, key=0)  # agrees with the names
    assert catch_up(backend, Recorder("fresh"), 1) == 3  # a checkpoint at 0 made nothing
    assert layouts(backend) == {"old": 2, "fresh": 1}


def test_inferred_layout() -> None:
    assert inferred_layout("o", 1, [], []) is None
    assert inferred_layout("o", 3, [("o", 5)], []) == 1
    assert inferred_layout("o", 1, [("o", 5)], []) is None
    assert inferred_layout("o", 1, [("o_p0", 1), ("o_p2", 1)], []) == 3
    assert inferred_layout("o", 4, [("o_p0", 1), ("o_p1", 1)], []) is None  # may be 4
    assert inferred_layout("o", 2, [("o_p3", 1)], []) == 4
    assert inferred_layout("o", 2, [("o_p3", 0)], []) is None  # never moved
    assert inferred_layout("o", 2, [("o", 1), ("o_p1", 1)], []) is None  # both kinds
    assert inferred_layout("o", 1, [("o_p1", 1)], ["o_p1"]) is None  # its own projection
    assert inferred_layout("o", 1, [("o_px", 1), ("or_p1", 1)], []) is None


def test_a_store_without_the_layouts_table_runs_unguarded(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A store created before the table existed keeps working until it is
    migrated again (with a warning), and then is guarded."""
    append(backend, 3)
    conn = backend.connection()
    query(conn, f"DROP TABLE {backend.store.config.layouts_table}")
    conn.commit()
    with caplog.at_level("WARNING", logger="pupsourcing"):
        assert catch_up(backend, Recorder(), 1) == 3
    assert "no projection_layouts table" in caplog.text
    assert "pupsourcing migrate" in caplog.text

    backend.store.create_schema(conn)
    conn.commit()
    with pytest.raises(PartitionLayoutError):  # read from the checkpoint's name
        catch_up(backend, Recorder(), 2)


def test_without_the_layouts_table_a_projection_warns_once(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Not once per partition (each has a processor of its own) nor per start."""
    append(backend, 6)
    conn = backend.connection()
    query(conn, f"DROP TABLE {backend.store.config.layouts_table}")
    conn.commit()
    with caplog.at_level("WARNING", logger="pupsourcing"):
        assert run_all(backend, Recorder(), 3) == 6
        assert run_all(backend, Recorder(), 3) == 0
        assert catch_up(backend, Recorder("other"), 1) == 6
    warnings = [r.getMessage() for r in caplog.records if "no projection_layouts" in r.message]
    assert [w.split(":")[0] for w in warnings] == ["projection layout", "projection other"]


# -- a running processor and a changed layout ---------------------------------------


class Rows:
    """Writes one row per event through ``tx``: a duplicate violates the key."""

    def __init__(self, backend: Backend) -> None:
        self.name = "totals"
        self.mark = "?" if backend.name == "sqlite" else "%s"

    def handle(self, e: Any, tx: Any) -> None:
        tx.cursor().execute(f"INSERT INTO rm (position) VALUES ({self.mark})", (e.global_position,))


def read_model(backend: Backend) -> list[int]:
    conn = backend.connect()
    try:
        return sorted(int(row[0]) for row in query(conn, "SELECT position FROM rm"))
    finally:
        conn.close()


def append_to(backend: Backend, *aggregate_ids: str) -> list[int]:
    conn = backend.connection()
    positions: list[int] = []
    for aggregate_id in aggregate_ids:
        result = backend.store.append(conn, ExpectedVersion.any(), [event(aggregate_id)])
        positions += result.global_positions
    conn.commit()
    return positions


def reset(backend: Backend, *, layout: bool = True) -> None:
    """What `pupsourcing projections reset totals --force` does (the layout
    first, unless the store has no layouts table), and the operator's
    clearing of the read model."""
    conn = backend.connection()
    if layout:
        query(conn, f"DELETE FROM {backend.store.config.layouts_table}")
        conn.commit()
    for name in backend.checkpoints():
        backend.store.update_checkpoint(conn, name, 0)
    query(conn, "DELETE FROM rm")
    conn.commit()


def processors(backend: Backend, stack: contextlib.ExitStack, total: int) -> list[Any]:
    return [
        stack.enter_context(
            backend.Processor(
                backend.connect,
                backend.store,
                ProcessorConfig(partition_key=key, total_partitions=total),
            )
        )
        for key in range(total)
    ]


@pytest.fixture
def rm(backend: Backend) -> None:
    conn = backend.connection()
    query(conn, "CREATE TABLE rm (position BIGINT PRIMARY KEY)")
    conn.commit()


# The new-count processors that handle the new events before the old ones'
# next batch: none (the old processors' cached checkpoints are those the new
# ones wrote), some (partition 0's checkpoint is still the cached one, and the
# old handler meets a row written under the new layout), all (every
# checkpoint moved on).
@pytest.mark.parametrize("ahead", [(), (1, 2), (0, 1, 2)], ids=["none", "some", "all"])
@pytest.mark.usefixtures("rm")
def test_a_running_processor_stops_once_another_count_is_recorded(
    backend: Backend, ahead: tuple[int, ...]
) -> None:
    """Old-count processors left running (idle at the head) through a reset
    and a start with another count stop at their next batch with
    :class:`PartitionLayoutError`, committing nothing."""
    positions = append_to(backend, *(f"agg-{i}" for i in range(12)))
    projection = Rows(backend)
    with contextlib.ExitStack() as stack:
        old = processors(backend, stack, 2)
        assert sum(p.catch_up(projection) for p in old) == 12
        reset(backend)
        new = processors(backend, stack, 3)
        assert sum(p.catch_up(projection) for p in new) == 12
        assert layouts(backend) == {"totals": 3}

        # Of the new events, some are partition 0's of 2 and of 3, some
        # partition 0's of 2 but 1's or 2's of 3 (fnv1a_32 % 6: 0 and 2, 4).
        positions += append_to(backend, *(f"new-{i}" for i in range(8)))
        for key in ahead:
            new[key].catch_up(projection)
        before = backend.checkpoints()
        rows = read_model(backend)
        for processor in old:
            with pytest.raises(PartitionLayoutError) as caught:
                processor.catch_up(projection)
            assert (caught.value.recorded, caught.value.requested) == (3, 2)
        assert backend.checkpoints() == before
        assert read_model(backend) == rows
        assert layouts(backend) == {"totals": 3}

        assert sum(p.catch_up(projection) for p in new) == 20 - len(rows)
    assert read_model(backend) == positions


@pytest.mark.usefixtures("rm")
def test_running_processors_pick_a_reset_up_with_the_same_count(backend: Backend) -> None:
    """A reset with the processors running (``--force``): their next batch
    finds the layout forgotten, records it again and starts over from the
    reset checkpoint."""
    positions = append_to(backend, *(f"agg-{i}" for i in range(12)))
    projection = Rows(backend)
    with contextlib.ExitStack() as stack:
        running = processors(backend, stack, 2)
        assert sum(p.catch_up(projection) for p in running) == 12
        reset(backend)
        positions += append_to(backend, *(f"new-{i}" for i in range(8)))
        assert sum(p.catch_up(projection) for p in running) == 20
        assert layouts(backend) == {"totals": 2}
        # The layout cleared alone (a reset seen between its two commits):
        # the next batch records it again and goes on where it was.
        conn = backend.connection()
        query(conn, f"DELETE FROM {backend.store.config.layouts_table}")
        conn.commit()
        positions += append_to(backend, "later-0", "later-1", "later-2")
        assert sum(p.catch_up(projection) for p in running) == 3
        assert layouts(backend) == {"totals": 2}
    assert read_model(backend) == positions


@pytest.mark.usefixtures("rm")
def test_without_the_layouts_table_running_processors_stay_unguarded(backend: Backend) -> None:
    """A store without the layouts table: batches move their checkpoints as
    before, a reset is picked up, and another count is not noticed."""
    conn = backend.connection()
    query(conn, f"DROP TABLE {backend.store.config.layouts_table}")
    conn.commit()
    positions = append_to(backend, *(f"agg-{i}" for i in range(12)))
    projection = Rows(backend)
    with contextlib.ExitStack() as stack:
        running = processors(backend, stack, 2)
        assert sum(p.catch_up(projection) for p in running) == 12
        reset(backend, layout=False)
        positions += append_to(backend, *(f"new-{i}" for i in range(8)))
        assert sum(p.catch_up(projection) for p in running) == 20
        assert read_model(backend) == positions
        # Nothing records another count: a new one runs beside the old.
        assert processors(backend, stack, 3)[2].catch_up(Recorder("totals")) > 0
        more = append_to(backend, "later-0")
        assert sum(p.catch_up(projection) for p in running) == 1
    assert read_model(backend) == positions + more
    assert backend.checkpoints() == {"totals_p0": 21, "totals_p1": 21, "totals_p2": 20}
