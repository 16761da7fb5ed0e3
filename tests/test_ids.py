"""Time-ordered event ids (pupsourcing.uuid7)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conftest import Backend
from helpers import event
from pupsourcing import ExpectedVersion, uuid7
from pupsourcing.core import ids


def _millis(value: uuid.UUID) -> int:
    return value.int >> 80


def test_layout_follows_rfc_9562() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert isinstance(value, uuid.UUID)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= _millis(value) <= after + 1


def test_ids_of_one_process_increase_strictly() -> None:
    made = [uuid7() for _ in range(20_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    # The text form (what SQLite and MySQL store) sorts the same way.
    assert [str(u) for u in made] == sorted(str(u) for u in made)


def test_ids_from_many_threads_are_unique_and_each_thread_increases() -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def make(out: list[uuid.UUID]) -> None:
        out.extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [u for out in made for u in out]
    assert len(set(every)) == len(every) == 40_000
    for out in made:
        assert out == sorted(out)


def test_an_exhausted_counter_borrows_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time_ns() // 1_000_000
    monkeypatch.setattr(ids, "_last_ms", now + 5)
    monkeypatch.setattr(ids, "_counter", (1 << 42) - 1)
    first = uuid7()
    second = uuid7()
    assert _millis(first) == now + 6
    assert first < second


def test_a_clock_that_goes_back_keeps_ids_increasing(monkeypatch: pytest.MonkeyPatch) -> None:
    latest = uuid7()
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000_000)  # 2001
    later = [uuid7() for _ in range(3)]
    assert [latest, *later] == sorted([latest, *later])
    assert _millis(later[-1]) == _millis(latest)


@pytest.mark.both_apis
def test_round_trips_through_every_store(backend: Backend) -> None:
    conn = backend.connection()
    given = [event("agg-7", f"E{i}", event_id=uuid7()) for i in range(3)]
    backend.store.append(conn, ExpectedVersion.no_stream(), given)
    conn.commit()
    stream = backend.store.read_aggregate_stream(conn, "Shop", "Order", "agg-7")
    assert [e.event_id for e in stream] == [e.event_id for e in given]
