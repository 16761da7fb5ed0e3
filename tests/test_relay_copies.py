"""Two copies of one ``NatsRelay`` (one name) at once, as in a rolling
deploy, against the real NATS JetStream server and the databases: each event
in the stream once (past a short duplicate window), the checkpoint never
moving back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
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
