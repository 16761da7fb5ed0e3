"""Two copies of one ``NatsRelay`` (one name) at once, as in a rolling
deploy, against the real NATS JetStream server and the databases: each event
in the stream once (past a short duplicate window), the checkpoint never
moving back, one copy publishing while the other waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, made_backend
from nats_helpers import JetStream, jetstream
from pupsourcing import Event
from pupsourcing.relay import NatsRelay
from test_relay_nats import (
    append,
    assert_exactly_once_in_order,
    publish_as_the_relay,
    relay,
    stored_positions,
)

WINDOW = 0.3
"""The streams' duplicate window: short, so a message sent twice shows."""


@pytest.fixture
def js() -> Iterator[JetStream]:
    yield from jetstream()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with made_backend(request.param, tmp_path) as backend:
        yield backend


def set_checkpoint(db: Backend, name: str, position: int) -> None:
    conn = db.connect()
    try:
        db.store.update_checkpoint(conn, name, position)
        conn.commit()
    finally:
        conn.close()


def read_events(db: Backend, after: int) -> list[Any]:
    conn = db.connect()
    try:
        return list(db.store.read_events(conn, after, 1000))
    finally:
        conn.close()


class CheckpointWatch:
    """Reads a checkpoint every few milliseconds on a thread; every value seen."""

    def __init__(self, db: Backend, name: str) -> None:
        self.db, self.name = db, name
        self.seen: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        conn = self.db.connect()
        try:
            while not self.stop.is_set():
                self.seen.append(self.db.store.get_checkpoint(conn, self.name))
                conn.commit()
                time.sleep(0.005)
        finally:
            conn.close()

    def __enter__(self) -> CheckpointWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def assert_never_back(self) -> None:
        backs = [(a, b) for a, b in zip(self.seen, self.seen[1:], strict=False) if b < a]
        assert backs == [], f"the checkpoint moved back: {backs[:5]}"


def test_a_copy_resuming_while_the_other_moves_on_never_moves_the_checkpoint_back(
    db: Backend, js: JetStream
) -> None:
    """A copy starts while the other has its last batch acknowledged but
    not yet committed: it finds the stream ahead of the checkpoint and
    checks the events in between. Meanwhile the other copy commits and
    relays ten more. The starting copy must not set the checkpoint back
    to where the stream was, nor publish those ten again past the
    duplicate window."""
    stream, prefix = js.new_stream(duplicate_window=WINDOW)
    for i in range(10):
        append(db, [Event("Shop", "Order", f"o{i % 3}", "Placed", b"{}")])
    assert asyncio.run(_catch_up(relay(db, js, stream, prefix, name="two"))) == 10
    set_checkpoint(db, "relay_two", 5)  # the other copy's last batch, not committed yet
    starting = relay(db, js, stream, prefix, name="two")
    check_held = starting._link.check_held

    async def meanwhile_the_other_copy_moves_on(after: int, read: Any) -> None:
        await check_held(after, read)
        await asyncio.to_thread(set_checkpoint, db, "relay_two", 10)
        more = [Event("Shop", "Order", "o1", "Paid", b"{}") for _ in range(10)]
        await asyncio.to_thread(append, db, more)
        events = await asyncio.to_thread(read_events, db, 10)
        await publish_as_the_relay(js.url, stream, prefix, events)
        await asyncio.to_thread(set_checkpoint, db, "relay_two", 20)
        await asyncio.sleep(WINDOW * 2)  # past the duplicate window

    starting._link.check_held = meanwhile_the_other_copy_moves_on  # type: ignore[method-assign]
    with CheckpointWatch(db, "relay_two") as watch:
        asyncio.run(_catch_up(starting))
    watch.assert_never_back()
    assert db.checkpoints()["relay_two"] == 20
    assert_exactly_once_in_order(js.messages(stream), db)


async def _catch_up(r: NatsRelay) -> int:
    async with r:
        return await r.catch_up()


class Sent:
    """Records, for each copy, the positions it sent to JetStream."""

    def __init__(self) -> None:
        self.by: dict[str, list[int]] = {}

    def watch(self, r: NatsRelay, label: str) -> None:
        link, publish = r._link, r._link.publish
        sent = self.by.setdefault(label, [])

        async def recording(events: Any) -> int:
            events = list(events)
            sent.extend(e.global_position for e in events if e.global_position > link.held)
            return await publish(events)

        link.publish = recording  # type: ignore[method-assign]

    def twice(self) -> list[int]:
        seen: dict[int, int] = {}
        for positions in self.by.values():
            for p in positions:
                seen[p] = seen.get(p, 0) + 1
        return sorted(p for p, n in seen.items() if n > 1)


def test_a_rolling_deploy_publishes_each_event_once_from_one_copy(
    db: Backend, js: JetStream
) -> None:
    """Copies of one relay start and stop overlapping (each new one starts
    before the previous one stops) while events are appended: the stream
    holds each once, the checkpoint never moves back, and no event is sent
    by two copies (one publishes, the others wait)."""
    stream, prefix = js.new_stream(duplicate_window=WINDOW)
    sent = Sent()
    appended = threading.Event()

    def appender() -> None:
        for i in range(40):
            append(db, [Event("Shop", "Order", f"o{i % 5}", "Placed", b"{}") for _ in range(5)])
            time.sleep(0.03)
        appended.set()

    async def copy(label: str, start: asyncio.Event, stop: asyncio.Event) -> None:
        r = relay(db, js, stream, prefix, name="roll", batch_size=3, poll_interval=0.02)
        sent.watch(r, label)
        await start.wait()
        async with r:
            await r.run(stop=stop)

    async def deploy() -> None:
        generations = 5
        starts = [asyncio.Event() for _ in range(generations)]
        stops = [asyncio.Event() for _ in range(generations)]
        tasks = [
            asyncio.create_task(copy(f"g{i}", starts[i], stops[i])) for i in range(generations)
        ]
        starts[0].set()
        for i in range(1, generations):
            await asyncio.sleep(0.4)
            starts[i].set()  # the new copy starts ...
            await asyncio.sleep(0.3)
            stops[i - 1].set()  # ... and the old one stops a while later
        await asyncio.to_thread(appended.wait)
        head = stored_positions(db)[-1]
        deadline = time.monotonic() + 30
        while db.checkpoints().get("relay_roll") != head and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(WINDOW * 2)
        stops[-1].set()
        await asyncio.gather(*tasks)

    thread = threading.Thread(target=appender)
    with CheckpointWatch(db, "relay_roll") as watch:
        thread.start()
        try:
            asyncio.run(deploy())
        finally:
            thread.join()
    watch.assert_never_back()
    assert db.checkpoints()["relay_roll"] == stored_positions(db)[-1]
    assert_exactly_once_in_order(js.messages(stream), db)
    assert sent.twice() == []


def test_a_standby_copy_takes_over_when_the_active_one_dies(
    db: Backend, js: JetStream, caplog: pytest.LogCaptureFixture
) -> None:
    """The active copy dies without giving the lease up: the standby copy,
    which published nothing meanwhile, takes over once the lease ran out
    (1 s here) and publishes the rest, each event once."""
    stream, prefix = js.new_stream(duplicate_window=WINDOW)
    sent = Sent()
    first, second = (
        relay(db, js, stream, prefix, name="ha", poll_interval=0.02, lease_ttl=1.0) for _ in "ab"
    )
    sent.watch(first, "first")
    sent.watch(second, "second")

    def order(aggregate_id: str) -> list[Event]:
        return [Event("Shop", "Order", aggregate_id, "Placed", b"{}") for _ in range(5)]

    async def relayed() -> None:
        head = (await asyncio.to_thread(stored_positions, db))[-1]
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(db.checkpoints)).get("relay_ha") != head:
            assert time.monotonic() < deadline, "not relayed"
            await asyncio.sleep(0.02)

    async def scenario() -> float:
        stop = asyncio.Event()
        active = asyncio.create_task(first.run(stop=stop))
        await asyncio.to_thread(append, db, order("o1"))
        await relayed()
        standby = asyncio.create_task(second.run(stop=stop))
        await asyncio.to_thread(append, db, order("o2"))
        await relayed()
        await asyncio.sleep(0.5)

        async def dead() -> None:
            pass

        first._lease.release = dead  # type: ignore[method-assign,union-attr]
        active.cancel()  # dies: its lease is neither renewed nor released
        with contextlib.suppress(asyncio.CancelledError):
            await active
        died = time.monotonic()
        await asyncio.to_thread(append, db, order("o3"))
        await relayed()
        took = time.monotonic() - died
        stop.set()
        await standby
        await first.close()
        await second.close()
        return took

    with caplog.at_level(logging.INFO, logger="pupsourcing.relay"):
        took = asyncio.run(scenario())
    assert took < 3.0
    assert sent.by["first"] == list(range(1, 11))
    assert sent.by["second"] == list(range(11, 16))
    assert_exactly_once_in_order(js.messages(stream), db)
    lines = [r.getMessage() for r in caplog.records if "relay_ha:" in r.getMessage()]
    assert any("another copy is active; standing by" in line for line in lines), lines
    assert sum("active (owner" in line for line in lines) == 2, lines


def test_a_batch_slower_than_the_lease_keeps_the_lease(db: Backend, js: JetStream) -> None:
    """The active copy's first batch takes longer than the lease TTL to be
    acknowledged (a slow NATS): its lease is renewed meanwhile, so the
    standby copy does not take over while that batch is in flight. On SQLite
    the first batch held the database's write lock while it was published,
    so the renewal, on a connection of its own, waited for the batch: the
    lease ran out and the standby copy published as soon as it could."""
    stream, prefix = js.new_stream(duplicate_window=WINDOW)
    append(db, [Event("Shop", "Order", "o1", "Placed", b"{}") for _ in range(5)])
    sent = Sent()
    active, standby = (
        relay(db, js, stream, prefix, name="slow", poll_interval=0.02, lease_ttl=1.0) for _ in "ab"
    )
    sent.watch(standby, "standby")
    publish, renew = active._link.publish, active._lease.renew  # type: ignore[union-attr]
    publishing: list[float] = []
    renewed: list[float] = []

    async def slow(events: Any) -> int:
        if not publishing:
            publishing.append(time.monotonic())
            await asyncio.sleep(2.5)  # past the TTL: JetStream slow to acknowledge
            publishing.append(time.monotonic())
        return await publish(events)

    async def renewing() -> bool:
        held = await renew()
        if held:
            renewed.append(time.monotonic())
        return held

    active._link.publish = slow  # type: ignore[method-assign]
    active._lease.renew = renewing  # type: ignore[method-assign,union-attr]

    async def scenario() -> None:
        stop = asyncio.Event()
        first = asyncio.create_task(active.run(stop=stop))
        while not publishing:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(standby.run(stop=stop))
        while len(publishing) < 2:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(append, db, [Event("Shop", "Order", "o2", "Placed", b"{}")])
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(first, second)
        await active.close()
        await standby.close()

    asyncio.run(scenario())
    started, ended = publishing
    assert [t for t in renewed if started < t < ended], "not renewed during the slow batch"
    assert sent.by["standby"] == []
    assert_exactly_once_in_order(js.messages(stream), db)


def test_a_lease_outage_is_logged_like_a_database_outage(
    tmp_path: Path, js: JetStream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds SQLite's write lock, so the lease cannot be
    taken (busy time-out 0.06 s, a fifth of the TTL): the first failure is a WARNING, the next
    ones DEBUG with a WARNING again every RECONNECT_WARNING seconds (0.5
    here), and the lease working again is INFO, once."""
    from pupsourcing.adapters.sqlite import AsyncSQLiteStore, connect, connect_async
    from pupsourcing.relay import _relay as relay_module

    monkeypatch.setattr(relay_module, "RECONNECT_WARNING", 0.5)
    with made_backend("sqlite", tmp_path):
        path = tmp_path / "store.db"
        stream, prefix = js.new_stream()
        r = NatsRelay(
            lambda: connect_async(path, timeout=0.05),
            AsyncSQLiteStore(),
            stream=stream,
            servers=js.url,
            subject_prefix=prefix,
            poll_interval=0.02,
            lease_ttl=0.3,
        )
        blocker = connect(path)
        blocker.execute("BEGIN IMMEDIATE")

        def lines(mark: str) -> list[logging.LogRecord]:
            return [r for r in caplog.records if mark in r.getMessage()]

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(r.run(stop=stop))
            deadline = time.monotonic() + 20
            while len(lines("retrying in")) < 5:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.02)
            blocker.rollback()
            while not lines("active (owner"):
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.02)
            stop.set()
            await task
            await r.close()

        try:
            with caplog.at_level(logging.DEBUG, logger="pupsourcing.relay"):
                asyncio.run(scenario())
        finally:
            blocker.close()
    first, *others = lines("retrying in")
    assert first.levelno == logging.WARNING
    assert "relay relay_relay: lease: OperationalError: database is locked" in first.getMessage()
    assert all("lease still fails after" in r.getMessage() for r in others)
    levels = [r.levelno for r in others]
    assert logging.DEBUG in levels
    assert 0 < levels.count(logging.WARNING) < len(levels)
    again = lines("lease statements work again after")
    assert [r.levelno for r in again] == [logging.INFO]


def test_a_renewal_waiting_on_a_lock_stops_publishing_before_the_lease_runs_out(
    db: Backend, js: JetStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Another session holds the relay's lease row locked (SQLite: the write
    lock), so the renewal waits (PostgreSQL has no lock timeout by default,
    MariaDB waits 50 s, SQLite its busy timeout of 5 s): the copy stops
    publishing and stands by before its lease runs out, then is active
    again once the lock is gone."""
    from test_claiming import lock_lease_row

    stream, prefix = js.new_stream()
    r = relay(db, js, stream, prefix, name="locked", poll_interval=0.02, lease_ttl=1.0)

    def lines(mark: str) -> list[str]:
        return [rec.getMessage() for rec in caplog.records if mark in rec.getMessage()]

    async def scenario() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(r.run(stop=stop))
        deadline = time.monotonic() + 20
        while not lines("active (owner"):
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as blocking:  # (SQLite: one thread per connection)
            blocker, expires = await loop.run_in_executor(
                blocking, lock_lease_row, db, "relay_locked", 0
            )
            try:
                while not lines("standing by after this batch") and time.monotonic() < expires + 2:
                    await asyncio.sleep(0.01)
                halted = time.monotonic()
            finally:
                await loop.run_in_executor(blocking, blocker.rollback)
                await loop.run_in_executor(blocking, blocker.close)
        while halted < expires and len(lines("active (owner")) < 2:
            assert time.monotonic() < deadline + 10, caplog.text
            await asyncio.sleep(0.02)
        stop.set()
        await task
        await r.close()
        return halted, expires

    with caplog.at_level(logging.INFO, logger="pupsourcing.relay"):
        halted, expires = asyncio.run(scenario())
    assert halted < expires, f"published {halted - expires:.2f} s past the lease"
    assert lines("the lease was not renewed for 0.6 s"), caplog.text


def test_a_relay_taking_its_lease_stops_promptly_while_the_lease_row_is_locked(
    db: Backend, js: JetStream
) -> None:
    """Another session holds the relay's lease row locked (SQLite: the write
    lock) as the relay starts, and the relay is asked to stop: its acquire
    gives up the lock wait after a fraction of the TTL (PostgreSQL would
    wait without end, MariaDB 50 s, SQLite its busy timeout of 5 s), so it
    returns."""
    from test_claiming import lock_lease_row

    ttl = 1.6
    bound = 2 * ttl  # (MariaDB waits whole seconds: 1 s per lease statement)
    conn = db.connect()
    try:
        db.store._run(conn, db.store.dialect.leases.ensure("relay_stuck", 1))
        conn.commit()
    finally:
        conn.close()
    stream, prefix = js.new_stream()
    r = relay(db, js, stream, prefix, name="stuck", poll_interval=0.02, lease_ttl=ttl)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        with ThreadPoolExecutor(1) as blocking:  # (SQLite: one thread per connection)
            blocker, _ = await loop.run_in_executor(blocking, lock_lease_row, db, "relay_stuck", 0)
            try:
                task = asyncio.create_task(r.run(stop=stop))
                await asyncio.sleep(0.5)  # its acquire waits on the lock
                asked = time.monotonic()
                stop.set()
                await asyncio.wait({task}, timeout=bound)
                took = time.monotonic() - asked
            finally:
                await loop.run_in_executor(blocking, blocker.rollback)
                await loop.run_in_executor(blocking, blocker.close)
        await asyncio.wait_for(task, 10)
        await r.close()
        return took

    took = asyncio.run(scenario())
    assert took < bound, f"the relay took {took:.2f} s to stop (TTL {ttl})"
