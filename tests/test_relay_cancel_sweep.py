"""Cancellation sweep of the NATS relay: ``NatsRelay.run`` cancelled (or
its stop event set) at its first operation, then at its second, and so on
until it completes, on PostgreSQL, MariaDB and SQLite against the real
JetStream server. An operation is a database statement (the batches', the
checkpoint's, ``_resume``'s, the lease's: taking, renewing, giving it up)
or one of the link's JetStream operations (connecting, reading the stream's
last message, checking what it holds, publishing a batch and awaiting its
acknowledgements).

Each run starts with the stream holding the first events but the
checkpoint at 0, so that ``_resume`` checks them and moves the checkpoint.
The run is cancelled ``"before"`` the operation (the cancellation lands on
an await ahead of it: in the task of a lease renewal, once the cancellation
reached it), or as it is ``"sent"`` (the driver, or nats-py, waits for the
reply), or its stop event is set there (``"stop"``). After each:

- the cancellation reached the caller (a stop: ``run`` returned);
- the checkpoint is not past an event the stream lacks, and the stream
  holds a prefix of the events, each once;
- the lease is free (another copy may take it at once), unless the
  cancellation cut its release short: then it runs out within its TTL;
- no lock is held: a lease taken and an append made on other connections,
  whose lock waits end after a second, succeed;
- closed, the relay leaves no task behind (NATS's included);
- a fresh relay then stores every event in the stream exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, made_backend
from nats_helpers import JetStream, connected, jetstream
from pupsourcing import Event
from pupsourcing.relay import NatsRelay
from pupsourcing.relay import _relay as relay_module
from test_cancel_sweep import OPENED, appends_from_another_connection, close_all, opener
from test_relay_nats import append, stored_positions
from test_relay_nats import relay as make_relay

MODES = ["before", "sent", "stop"]
EVENTS = 6
PUBLISHED = 2
"""Events in the stream when the relay starts, its checkpoint at 0."""
TTL = 0.3
MAX_OPERATIONS = 150
DOING = contextvars.ContextVar("DOING", default="statement")
"""What the lease is doing in this task, if anything."""
HANG = 20.0
"""Seconds an interrupted run may take to end."""


@pytest.fixture
def js() -> Iterator[JetStream]:
    yield from jetstream()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with made_backend(request.param, tmp_path) as backend:
        yield backend


class RelaySweep:
    """Counts a relay's operations (its store's statements, its link's
    JetStream operations) and at the ``at``-th cancels ``target``, or sets
    ``stop`` (mode ``"stop"``)."""

    def __init__(self, store: Any, mode: str) -> None:
        self.mode = mode
        self.at = self.made = 0
        self.target: asyncio.Task[Any] | None = None
        self.stop = asyncio.Event()
        self.hit = ""
        """What the ``at``-th operation was."""
        self.hits: set[str] = set()
        """The kinds of operation interrupted."""
        original, end = store._execute, store._end_transaction

        async def execute(tx: Any, statement: Any) -> Any:
            if statement.control is not None:
                return await end_transaction(tx, commit=statement.control == "commit")
            if not (statement.begin and await store._in_transaction(tx)):
                await self._reached(f"{DOING.get()}: {statement.sql[:40]}")
            return await original(tx, statement)

        async def end_transaction(tx: Any, *, commit: bool) -> None:
            await self._reached(f"{DOING.get()}: {'COMMIT' if commit else 'ROLLBACK'}")
            await end(tx, commit=commit)

        store._execute, store._end_transaction = execute, end_transaction

    def watch(self, relay: NatsRelay) -> None:
        """Count ``relay``'s JetStream operations too, and label the
        statements of its lease's acquire, renew and release."""
        link: Any = relay._link
        for name in ("open", "last_position", "check_held", "publish"):
            setattr(link, name, self._counted(name, getattr(link, name)))
        lease: Any = relay._lease
        for name in ("acquire", "renew", "release"):
            setattr(lease, name, _labelled(name, getattr(lease, name)))

    def _counted(self, name: str, original: Any) -> Any:
        async def operation(*args: Any) -> Any:
            await self._reached(f"nats {name}")
            return await original(*args)

        return operation

    def arm(self, at: int) -> None:
        self.at, self.made, self.hit = at, 0, ""

    def disarm(self) -> bool:
        """Whether the operation to interrupt was reached."""
        reached = self.made >= self.at
        self.at = 0
        return reached

    async def _reached(self, what: str) -> None:
        self.made += 1
        if self.made != self.at:
            return
        self.hit = what
        self.hits.add(what.split(":")[0])
        if self.mode == "stop":
            self.stop.set()
            return
        assert self.target is not None
        self.target.cancel()
        if self.mode == "before":
            await asyncio.Event().wait()  # until the cancellation reaches this task


def _labelled(name: str, original: Any) -> Any:
    async def leasing() -> Any:
        token = DOING.set(name)
        try:
            return await original()
        finally:
            DOING.reset(token)

    return leasing


async def stream_positions(nc: Any, stream: str) -> list[int]:
    """The global position of each message of ``stream``, in order."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    positions = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(stream, seq)
        positions.append(int((message.headers or {})["Pupsourcing-Global-Position"]))
    return positions


async def new_stream(nc: Any, stream: str, prefix: str, events: list[Any]) -> None:
    """Create ``stream`` holding ``events`` as the relay publishes them."""
    from nats.js.api import StreamConfig

    from pupsourcing.relay._message import headers
    from pupsourcing.relay._subject import subject

    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"]))
    for event in events:
        await js.publish(
            subject(event, prefix), event.payload, stream=stream, headers=headers(event)
        )


@contextlib.asynccontextmanager
async def nats_connection(js: JetStream) -> AsyncIterator[Any]:
    async with connected(js.url) as nc:
        yield nc


async def lease_free(db: Backend, connect: Any, name: str) -> bool:
    """Whether another owner takes the lease ``name`` at once (not kept:
    rolled back), on a connection whose lock waits end after a second."""
    store = db.async_store()
    plans = store.dialect.leases
    conn = await connect()
    await store._run(conn, plans.transaction(plans.ensure(name, 1), 60))
    taken = await store._run(conn, plans.transaction(plans.acquire(name, 0, "sweeper", 60), 60))
    await store._end_transaction(conn, commit=False)
    if not taken:
        (lease,) = await store._run(conn, plans.list(name))
        assert 0 < lease.expires_in <= TTL, lease
        await store._end_transaction(conn, commit=False)
    return bool(taken)


@pytest.mark.parametrize("mode", MODES)
def test_relay_run_interrupted_anywhere(
    db: Backend, js: JetStream, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` cancelled, or stopped, at any of its operations keeps the
    invariants above (see the module's docs)."""
    for i in range(EVENTS):
        append(db, [Event("Shop", "Order", f"o{i % 2}", "Placed", b"{}")])
    stored = stored_positions(db)
    conn = db.connect()
    first = db.store.read_events(conn, 0, PUBLISHED)
    conn.close()
    pause = relay_module.pause

    async def renewing_at_once(seconds: float, stop: Any) -> bool:
        """The lease's first renewal made at once (not after a third of
        its TTL): every run renews it."""
        task = asyncio.current_task()
        coro: Any = task and task.get_coro()
        if coro is not None and coro.__qualname__.endswith("_keep_lease") and not renewed.get(task):
            renewed[task] = True
            await asyncio.sleep(0)
            return bool(stop is not None and stop.is_set())
        return await pause(seconds, stop)

    renewed: dict[Any, bool] = {}
    monkeypatch.setattr(relay_module, "pause", renewing_at_once)

    store = db.async_store()
    sweeper = RelaySweep(store, mode)

    async def scenario() -> int:
        async with opener(db) as connect, nats_connection(js) as nc:
            relay: Any = None
            name = stream = prefix = ""
            await nc.jetstream().account_info()  # (its first request starts a task)
            ours = asyncio.all_tasks()  # this connection's to NATS

            async def operation(at: int) -> None:
                nonlocal relay, name, stream, prefix
                name = f"sweep{at}"
                (stream, prefix) = js.new_stream()
                await new_stream(nc, stream, prefix, first)
                relay = NatsRelay(
                    db.open_async,
                    store,
                    stream=stream,
                    servers=js.url,
                    subject_prefix=prefix,
                    name=name,
                    batch_size=2,
                    poll_interval=0.05,
                    lease_ttl=TTL,
                )
                sweeper.watch(relay)
                sweeper.stop = stop = asyncio.Event()
                publish = relay._link.publish

                async def published(events: Any) -> int:
                    duplicates = await publish(events)
                    if relay._link.held >= stored[-1]:
                        stop.set()  # all relayed: the run ends after this batch
                    return int(duplicates)

                relay._link.publish = published
                sweeper.target = asyncio.current_task()
                sweeper.arm(at)
                await relay.run(stop=stop)

            async def check(at: int) -> None:
                where = f"operation {at} ({sweeper.hit})"
                checkpoint = db.checkpoints().get(f"relay_{name}", 0)
                positions = await stream_positions(nc, stream)
                assert positions == stored[: len(positions)], where
                assert checkpoint in [0, *positions], where
                if not await lease_free(db, connect, f"relay_{name}"):
                    assert sweeper.hit.startswith("release"), where
                await appends_from_another_connection(db, connect, "o0", commit=False)
                await relay.close()
                await no_tasks_left(where, ours)
                fresh = NatsRelay(
                    db.open_async,
                    db.async_store(),
                    stream=stream,
                    servers=js.url,
                    subject_prefix=prefix,
                    name=name,
                    lease_ttl=TTL,
                )
                async with fresh:
                    await asyncio.wait_for(fresh.catch_up(), HANG)
                assert await stream_positions(nc, stream) == stored, where
                assert db.checkpoints()[f"relay_{name}"] == stored[-1], where
                await nc.jetstream().delete_stream(stream)

            try:
                for at in range(1, MAX_OPERATIONS):
                    task = asyncio.create_task(operation(at))
                    done, _ = await asyncio.wait([task], timeout=HANG)
                    assert done, f"operation {at} ({sweeper.hit}): the run did not end"
                    if not sweeper.disarm():
                        await task
                        return at - 1
                    if mode == "stop":
                        assert task.result() is None, f"operation {at}"
                    else:
                        assert task.cancelled(), f"operation {at} ({sweeper.hit}): {task!r}"
                    await check(at)
                    await close_all(OPENED)
                raise AssertionError(f"still interrupted at operation {MAX_OPERATIONS}")
            finally:
                if relay is not None:
                    await relay.close()

    made = asyncio.run(scenario())
    assert made > 20
    # The lease's first renewal runs in its keeper's task alongside the run's
    # first JetStream calls, so which of them is the k-th operation varies
    # from run to run: the sweep may interrupt a renewal at every index where
    # `_resume` asks for the stream's last position. Every other kind is
    # reached in every sweep (the nats-py cancellation that call can drop is
    # covered by test_a_cancellation_nats_py_drops_still_ends_run).
    kinds = {"acquire", "renew", "release", "statement", "nats open"}
    assert kinds | {"nats check_held", "nats publish"} <= sweeper.hits


async def no_tasks_left(where: str, ours: set[asyncio.Task[Any]]) -> None:
    """Every task but ``ours`` ended (connections whose opening was
    cancelled are closed when they arrive: given a moment)."""
    from pupsourcing.aio import processor

    for _ in range(100):
        if not processor._closing_late:
            break
        await asyncio.sleep(0.01)
    left = asyncio.all_tasks() - ours
    assert not left, f"{where}: {left}"


def test_a_run_cancelled_as_it_takes_the_lease_gives_it_up(db: Backend, js: JetStream) -> None:
    """Cancelled as the lease's acquire commits (done on the server, its
    reply cut short), ``run`` gives the lease up: another copy takes it at
    once, not once its TTL ran out."""
    stream, prefix = js.new_stream()

    async def scenario() -> None:
        cut = make_relay(db, js, stream, prefix, name="cut", lease_ttl=TTL)
        lease: Any = cut._lease
        acquire = lease.acquire

        async def acquired_as_cancelled() -> bool:
            held = await acquire()
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
            return bool(held)

        lease.acquire = acquired_as_cancelled
        async with cut:
            task = asyncio.create_task(cut.run())
            await asyncio.wait([task])
            assert task.cancelled()
        async with opener(db) as connect:
            assert await lease_free(db, connect, "relay_cut")

    asyncio.run(scenario())


def test_a_cancellation_nats_py_drops_still_ends_run(js: JetStream, tmp_path: Path) -> None:
    """On Python 3.11, nats-py's requests (``asyncio.wait_for``) return a
    reply that arrived as the task was cancelled and drop the cancellation:
    ``run`` raises it all the same, publishing nothing."""
    stream, prefix = js.new_stream()
    with made_backend("sqlite", tmp_path) as db:
        append(db, [Event("Shop", "Order", "o1", "Placed", b"{}")])

        async def scenario() -> None:
            cut = make_relay(db, js, stream, prefix, lease_ttl=TTL)
            link: Any = cut._link
            last_position = link.last_position

            async def reply_arriving_as_cancelled() -> int:
                reply = asyncio.get_running_loop().create_future()
                task = asyncio.current_task()
                assert task is not None

                def arrive() -> None:
                    reply.set_result(None)
                    task.cancel()

                asyncio.get_running_loop().call_soon(arrive)
                await asyncio.wait_for(reply, HANG)  # as nats-py awaits a reply
                return int(await last_position())

            link.last_position = reply_arriving_as_cancelled
            stop = asyncio.Event()
            publish = link.publish

            async def published(events: Any) -> int:
                stop.set()
                return int(await publish(events))

            link.publish = published
            async with cut:
                task = asyncio.create_task(cut.run(stop=stop))
                await asyncio.wait([task])
                assert task.cancelled(), task
                assert not stop.is_set()

        asyncio.run(scenario())
