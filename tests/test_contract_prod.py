"""API.md sections 6 to 9 read as a user reads them: black-box tests of
claims no other test pinned, through the public names only, on the real
databases (domain layer, projections in production, relay, console)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, require
from helpers import event
from pupsourcing import AppendResult, ExpectedVersion, OptimisticConcurrencyError
from pupsourcing.aio import AsyncProcessor, AsyncRepository
from pupsourcing.domain import Aggregate, AggregateNotFoundError, JsonCodec, Repository
from pupsourcing.projection import Processor, ProcessorConfig


@dataclass(frozen=True)
class Opened:
    customer: str


@dataclass(frozen=True)
class Noted:
    n: int


class Account(Aggregate):
    bounded_context = "Sales"
    aggregate_type = "Account"
    applied = 0
    """How many events every instance applied, to tell a snapshot's use."""

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.customer: str | None = None
        self.notes: list[int] = []

    def apply(self, event: object) -> None:
        type(self).applied += 1
        match event:
            case Opened(customer=c):
                self.customer = c
            case Noted(n=n):
                self.notes.append(n)


def account_codec() -> JsonCodec:
    codec = JsonCodec()
    codec.register(Opened)
    codec.register(Noted)
    return codec


class Repo:
    """The blocking Repository, or the AsyncRepository awaited on the async
    backend's loop: one test covers both APIs."""

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        self.backend = backend
        if backend.api == "async":
            self.repo: Any = AsyncRepository(backend.store.raw, Account, account_codec(), **kwargs)
        else:
            self.repo = Repository(backend.store, Account, account_codec(), **kwargs)

    def _call(self, result: Any) -> Any:
        return self.backend.store.loop.call(result) if self.backend.api == "async" else result

    def _tx(self, tx: Any) -> Any:
        return tx.raw if self.backend.api == "async" else tx

    def save(self, tx: Any, aggregate: Any, **kwargs: Any) -> Any:
        return self._call(self.repo.save(self._tx(tx), aggregate, **kwargs))

    def load(self, tx: Any, aggregate_id: str, **kwargs: Any) -> Any:
        return self._call(self.repo.load(self._tx(tx), aggregate_id, **kwargs))


# -- 6. Domain layer -------------------------------------------------------------


@pytest.mark.both_apis
def test_save_appends_from_the_loaded_version_and_returns_the_append_result(
    backend: Backend,
) -> None:
    repo = Repo(backend)
    conn = backend.connection()
    account = Account("acc-1")
    account.record(Opened("ada"))
    account.record(Noted(1))
    first = repo.save(conn, account)
    assert isinstance(first, AppendResult)
    assert (first.from_version, first.to_version) == (0, 2)
    assert account.pending_events == ()
    assert account.version == 2
    assert repo.save(conn, account) is None  # nothing pending
    conn.commit()

    loaded = repo.load(conn, "acc-1")
    loaded.record(Noted(2))
    assert loaded.version == 3
    assert loaded.pending_events == (Noted(2),)
    second = repo.save(conn, loaded)
    assert (second.from_version, second.to_version) == (2, 3)
    conn.commit()
    stream = backend.store.read_aggregate_stream(conn, "Sales", "Account", "acc-1")
    assert [e.event_type for e in stream.events] == ["Opened", "Noted", "Noted"]
    assert [e.event_version for e in stream.events] == [1, 1, 1]
    assert json.loads(stream.events[0].payload) == {"customer": "ada"}
    conn.commit()


@pytest.mark.both_apis
def test_save_never_commits_and_load_raises_not_found_without_events(
    backend: Backend,
) -> None:
    repo = Repo(backend)
    conn = backend.connection()
    account = Account("acc-2")
    account.record(Opened("bob"))
    repo.save(conn, account)
    conn.rollback()
    other = backend.connection()
    with pytest.raises(AggregateNotFoundError):
        repo.load(other, "acc-2")
    other.rollback()


@pytest.mark.both_apis
def test_a_stale_aggregate_loses_the_race_and_keeps_its_pending_events(
    backend: Backend,
) -> None:
    repo = Repo(backend)
    conn = backend.connection()
    account = Account("acc-3")
    account.record(Opened("cy"))
    repo.save(conn, account)
    conn.commit()
    one, two = repo.load(conn, "acc-3"), repo.load(conn, "acc-3")
    conn.commit()
    one.record(Noted(1))
    repo.save(conn, one)
    conn.commit()
    two.record(Noted(2))
    with pytest.raises(OptimisticConcurrencyError):
        repo.save(conn, two)
    conn.rollback()
    assert two.pending_events == (Noted(2),)


@pytest.mark.both_apis
def test_load_at_a_version_and_from_the_newest_snapshot_at_or_below_it(
    backend: Backend,
) -> None:
    repo = Repo(backend, snapshot_every=2)
    conn = backend.connection()
    account = Account("acc-4")
    account.record(Opened("dee"))
    repo.save(conn, account)
    for n in range(1, 5):  # one save per event: snapshots at versions 2 and 4
        account.record(Noted(n))
        repo.save(conn, account)
    conn.commit()

    Account.applied = 0
    whole = repo.load(conn, "acc-4")
    assert (whole.version, whole.customer, whole.notes) == (5, "dee", [1, 2, 3, 4])
    assert Account.applied == 1  # the snapshot at 4, then event 5
    Account.applied = 0
    at3 = repo.load(conn, "acc-4", at_version=3)
    assert (at3.version, at3.notes) == (3, [1, 2])
    assert Account.applied == 1  # the snapshot at 2, then event 3
    Account.applied = 0
    at1 = repo.load(conn, "acc-4", at_version=1)
    assert (at1.version, at1.notes) == (1, [])
    assert Account.applied == 1
    conn.commit()

    class Reshaped(Account):  # another snapshot schema: its snapshots are ignored
        snapshot_schema = 2

    if backend.api == "async":
        other: Any = AsyncRepository(backend.store.raw, Reshaped, account_codec(), snapshot_every=2)
        rebuilt = backend.store.loop.call(other.load(conn.raw, "acc-4"))
    else:
        rebuilt = Repository(backend.store, Reshaped, account_codec(), snapshot_every=2).load(
            conn, "acc-4"
        )
    Account.applied = 0
    assert (rebuilt.version, rebuilt.notes) == (5, [1, 2, 3, 4])
    conn.commit()


# -- 7. Projections in production ------------------------------------------------


class Seen:
    name = "seen"

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.arrived = threading.Event()

    def handle(self, event: Any, tx: Any) -> None:
        self.positions.append(event.global_position)
        self.arrived.set()


class AsyncSeen(Seen):
    async def handle(self, event: Any, tx: Any) -> None:  # type: ignore[override]
        Seen.handle(self, event, tx)


WOKEN = 20.0
"""Well below the processors' 60 s poll: the event was found because of the
wake (MySQL's horizon waits on other tests' transactions, see test_push)."""


@pytest.mark.parametrize("name", ["sqlite", "mysql"])
def test_an_asyncio_store_s_append_wakes_a_blocking_processor(
    name: str, make_store_backend: Any
) -> None:
    backend: Backend = make_store_backend(name)
    projection = Seen()
    stop = threading.Event()
    processor = Processor(backend.connect, backend.store, ProcessorConfig(poll_interval=60.0))
    thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    thread.start()
    try:
        time.sleep(0.5)  # idle, waiting its 60 s
        store = backend.async_store()

        async def append() -> None:
            conn = await backend.open_async()
            try:
                await store.append(conn, ExpectedVersion.any(), [event("woken")])
                await conn.commit()
            finally:
                closed = conn.close()  # asyncmy's close() is not a coroutine
                if closed is not None:
                    await closed

        asyncio.run(append())
        assert projection.arrived.wait(WOKEN), "the blocking processor was not woken"
    finally:
        stop.set()
        thread.join(10)
        processor.close()


@pytest.mark.parametrize("name", ["sqlite", "mysql"])
def test_a_blocking_store_s_append_wakes_an_asyncio_processor(
    name: str, make_store_backend: Any
) -> None:
    backend: Backend = make_store_backend(name)
    projection = AsyncSeen()
    ready = threading.Event()
    loop_stop: list[Any] = []

    async def run() -> None:
        stop = asyncio.Event()
        loop_stop.append((asyncio.get_running_loop(), stop))
        ready.set()
        async with AsyncProcessor(
            backend.open_async, backend.async_store(), ProcessorConfig(poll_interval=60.0)
        ) as processor:
            await processor.run(projection, stop=stop)

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    try:
        assert ready.wait(10)
        time.sleep(0.5)
        conn = backend.connect()
        backend.store.append(conn, ExpectedVersion.any(), [event("woken")])
        conn.commit()
        conn.close()
        assert projection.arrived.wait(WOKEN), "the asyncio processor was not woken"
    finally:
        loop, stop = loop_stop[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


# -- 7. Metrics and traces -------------------------------------------------------

TRACED_LATE = """
import sys
from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.projection import Processor

store = SQLiteStore()  # made before the application configures OpenTelemetry

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

db = connect(sys.argv[1])
store.create_schema(db)
db.commit()
with trace.get_tracer("app").start_as_current_span("request") as span:
    result = store.append(db, ExpectedVersion.no_stream(), [Event("B", "T", "a", "E", b"{}")])
db.commit()
store.read_aggregate_stream(db, "B", "T", "a")
db.commit()


class Nothing:
    name = "nothing"

    def handle(self, event, tx):
        pass


with Processor(lambda: connect(sys.argv[1]), store) as processor:
    processor.catch_up(Nothing())
print(result.events[0].trace_id == format(span.get_span_context().trace_id, "032x"))
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_a_tracer_provider_configured_after_the_store_was_made_traces_it(
    tmp_path: Path,
) -> None:
    """API.md: "with an OpenTelemetry tracer provider configured" appends,
    stream reads and batches make spans; nothing says the store must be made
    after it (a module-level store is made at import, before ``main``)."""
    require("opentelemetry.sdk.trace")
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent(TRACED_LATE))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "late.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    stamped, names = done.stdout.splitlines()
    assert stamped == "True"
    assert names == str(
        sorted(
            [
                "pupsourcing.append",
                "pupsourcing.projection.batch",
                "pupsourcing.read_stream",
                "request",
            ]
        )
    )
