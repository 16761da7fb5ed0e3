"""A projection never skips a committed event, even when transactions commit out
of global-position order, and never stalls on a rolled-back position longer
than it takes to see the transaction ended."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, backends_and_apis, made_backend
from helpers import event, horizon_bound
from pupsourcing import ExpectedVersion, OptimisticConcurrencyError, PersistedEvent
from pupsourcing.projection import ProcessorConfig, core

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


class Recorder:
    def __init__(self, name: str = "gaps") -> None:
        self.name = name
        self.seen: list[PersistedEvent] = []
        self.lock = threading.Lock()

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        with self.lock:
            self.seen.append(event)

    def ids(self) -> Counter[uuid.UUID]:
        with self.lock:
            return Counter(e.event_id for e in self.seen)


def run_for(processor: Any, projection: Recorder, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_lower_position_committed_late_is_delivered(server: Backend) -> None:
    store = server.store
    writer_a, writer_b = server.connection(), server.connection()
    held = store.append(writer_a, ExpectedVersion.any(), [event("A")])  # left open
    done = store.append(writer_b, ExpectedVersion.any(), [event("B")])
    writer_b.commit()
    low, high = held.global_positions[0], done.global_positions[0]
    assert low < high

    projection = Recorder()
    processor = server.Processor(server.connect, store, ProcessorConfig(poll_interval=0.01))
    run_for(processor, projection, 0.3)
    # B is committed but lies beyond a position A may still commit: held back.
    assert projection.seen == []

    writer_a.commit()
    assert processor.catch_up(projection) == 2
    assert [e.global_position for e in projection.seen] == [low, high]
    assert processor.catch_up(projection) == 0
    assert store.get_checkpoint(server.connection(), "gaps") == high
    processor.close()


def test_a_rolled_back_position_does_not_stall(server: Backend) -> None:
    store = server.store
    writer_a, writer_b = server.connection(), server.connection()
    store.append(writer_a, ExpectedVersion.any(), [event("A")])
    done = store.append(writer_b, ExpectedVersion.any(), [event("B")])
    writer_b.commit()
    projection = Recorder()
    processor = server.Processor(server.connect, store, ProcessorConfig(poll_interval=0.01))
    run_for(processor, projection, 0.2)
    assert projection.seen == []

    writer_a.rollback()
    started = time.monotonic()
    assert processor.catch_up(projection) == 1
    assert time.monotonic() - started < horizon_bound(server.name, 1.0)
    assert [e.global_position for e in projection.seen] == list(done.global_positions)
    processor.close()


def test_a_long_wait_behind_an_open_writer_is_logged(
    server: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The processor waits without a time-out; an operator must still learn why
    # a projection stopped moving.
    monkeypatch.setattr(core, "HELD_BACK_WARNING", 0.05)
    store = server.store
    writer_a, writer_b = server.connection(), server.connection()
    store.append(writer_a, ExpectedVersion.any(), [event("A")])  # left open
    done = store.append(writer_b, ExpectedVersion.any(), [event("B")])
    writer_b.commit()
    processor = server.Processor(server.connect, store, ProcessorConfig(poll_interval=0.01))
    deadline = time.monotonic() + 15  # a loaded machine may take seconds to get going
    warnings: list[str] = []
    while not warnings and time.monotonic() < deadline:
        with caplog.at_level(logging.WARNING):
            run_for(processor, Recorder("held"), 0.4)
        warnings = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
    assert warnings, caplog.text
    assert "projection held " in warnings[0]
    assert f"up to position {done.global_positions[0]} " in warnings[0]

    writer_a.rollback()
    # MySQL's probe may see the writer's end up to a second or so late: only
    # a wait that goes on after that is worth a warning.
    monkeypatch.setattr(core, "HELD_BACK_WARNING", 5.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert processor.catch_up(Recorder("held")) == 1
    assert not [r for r in caplog.records if "has waited" in r.getMessage()]
    processor.close()


def test_raw_inserts_by_other_writers_are_covered_too(server: Backend) -> None:
    """Go services insert with plain INSERTs; the horizon does not depend on
    pupsourcing's own append path."""
    store = server.store
    raw = server.connection()
    cursor = raw.cursor()
    cursor.execute(
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, payload, metadata) "
        "VALUES ('Shop', 'Order', 'go-1', 1, %s, 'FromGo', %s, '{}') RETURNING global_position",
        (uuid.uuid4().bytes if server.name == "mysql" else uuid.uuid4(), b"{}"),
    )
    low = cursor.fetchone()[0]
    other = server.connection()
    high = store.append(other, ExpectedVersion.any(), [event("py-1")]).global_positions[0]
    other.commit()
    projection = Recorder()
    processor = server.Processor(server.connect, store, ProcessorConfig(poll_interval=0.01))
    run_for(processor, projection, 0.2)
    assert projection.seen == []
    raw.commit()
    processor.catch_up(projection)
    assert [e.global_position for e in projection.seen] == [low, high]
    processor.close()


@pytest.mark.parametrize("backend_api", backends_and_apis(["postgres", "sqlite", "mysql"]))
def test_randomized_writers_with_rollbacks(backend_api: tuple[str, str], tmp_path: Path) -> None:
    name, api = backend_api
    with made_backend(name, tmp_path, api=api) as backend:
        stress(backend)


def stress(backend: Backend, writers: int = 6, rounds: int = 60) -> None:
    store = backend.store
    committed: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = backend.connect()
        try:
            for _ in range(rounds):
                batch = [event(f"agg-{rng.randrange(8)}") for _ in range(rng.randint(1, 3))]
                batch = [event(batch[0].aggregate_id, f"E{i}") for i in range(len(batch))]
                expected = (
                    ExpectedVersion.any()
                    if rng.random() < 0.7
                    else ExpectedVersion.exact(rng.randrange(4))
                )
                try:
                    store.append(conn, expected, batch)
                except OptimisticConcurrencyError:
                    conn.rollback()
                    continue
                time.sleep(rng.random() * 0.004)
                ids = {e.event_id for e in batch}
                if rng.random() < 0.2:
                    conn.rollback()
                    with lock:
                        rolled_back.update(ids)
                else:
                    conn.commit()
                    with lock:
                        committed.update(ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    projection = Recorder("stress")
    processor = backend.Processor(
        backend.connect, store, ProcessorConfig(batch_size=20, poll_interval=0.005)
    )
    stop = threading.Event()
    follower = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    follower.start()
    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    deadline = time.monotonic() + 20
    while sum(projection.ids().values()) < len(committed) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # anything extra would show up now
    stop.set()
    follower.join(5)
    processor.close()

    seen = projection.ids()
    assert set(seen) == committed
    assert set(seen.values()) == {1}
    assert not set(seen) & rolled_back
    positions = [e.global_position for e in projection.seen]
    assert positions == sorted(positions)
    assert len(committed) > writers * rounds // 3
