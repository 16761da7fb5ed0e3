"""A blocking facade over the asyncio API, so that one acceptance suite runs
against both APIs.

The asyncio store, processor and runner run on a private event loop in a
background thread; the facade's methods submit coroutines to it and wait.
Connections are real asyncio connections (psycopg ``AsyncConnection``,
asyncmy, aiosqlite) behind a small DB-API-like view, so the tests' own SQL
goes through the asyncio driver too. Projections are handed to the
:class:`~pupsourcing.aio.AsyncProcessor` with an ``async def handle`` that
runs the test's blocking handler in a worker thread (its ``tx`` is the
processor's asyncio connection behind the same view), while the processor's
coroutine awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pupsourcing.aio import AsyncProcessor, AsyncRunner, AsyncSQLStore
from pupsourcing.core.events import PersistedEvent
from pupsourcing.projection import ProcessorConfig
from pupsourcing.runner import ProjectionRunner

T = TypeVar("T")


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class EventLoopThread:
    """An event loop running in a daemon thread; ``call`` waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="aio")
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("the facade was called from its own event loop (would deadlock)")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def call_until(
        self,
        start: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
        stop: threading.Event | None,
    ) -> T:
        """Run ``start(event)``, setting ``event`` on the loop once ``stop`` is set."""
        event = asyncio.Event()
        if stop is not None and stop.is_set():
            event.set()  # no waiter yet: safe from this thread
        future = asyncio.run_coroutine_threadsafe(start(event), self.loop)
        while stop is not None and not future.done():
            if stop.wait(0.005):
                self.loop.call_soon_threadsafe(event.set)
                break
        return future.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Cursor:
    """A blocking DB-API-like cursor over an asyncio connection: each
    ``execute`` runs on the loop and buffers the rows."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._rows: list[Any] = []
        self.rowcount = -1
        self.description: Any = None

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Cursor:
        raw = self._connection.raw

        async def run() -> None:
            cursor = await maybe_await(raw.cursor())
            try:
                await cursor.execute(sql, params if params is not None else ())
                self.rowcount = cursor.rowcount
                self.description = cursor.description
                self._rows = list(await cursor.fetchall()) if cursor.description else []
            finally:
                await maybe_await(cursor.close())

        self._connection.loop.call(run())
        return self

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def close(self) -> None:
        self._rows = []


class Connection:
    """A blocking DB-API-like view of an asyncio connection."""

    def __init__(self, loop: EventLoopThread, raw: Any) -> None:
        self.loop = loop
        self.raw = raw

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        self.loop.call(maybe_await(self.raw.commit()))

    def rollback(self) -> None:
        self.loop.call(maybe_await(self.raw.rollback()))

    def close(self) -> None:
        self.loop.call(maybe_await(self.raw.close()))


def unwrap(value: Any) -> Any:
    """The asyncio object behind a facade object (anything else as it is)."""
    return getattr(value, "raw", value)


class Store:
    """The blocking store API, run by an asyncio store on the loop."""

    def __init__(self, loop: EventLoopThread, store: AsyncSQLStore[Any]) -> None:
        self.loop = loop
        self.raw = store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.raw, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute  # config, dialect, schema_sql()

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.loop.call(attribute(*map(unwrap, args), **kwargs))

        return blocking


class ThreadedProjection:
    """A test's projection as an asyncio one: ``handle`` is ``async def`` and
    runs the blocking handler in a worker thread with the facade's view of the
    processor's connection. Everything else is the projection's own."""

    def __init__(self, loop: EventLoopThread, projection: Any) -> None:
        self._loop = loop
        self._projection = projection
        if callable(getattr(projection, "handle", None)):
            self.handle = self._handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._projection, name)

    async def _handle(self, event: PersistedEvent, tx: Any) -> None:
        await asyncio.to_thread(self._projection.handle, event, Connection(self._loop, tx))


class Processor:
    """The blocking processor API, run by an :class:`AsyncProcessor` on the loop."""

    def __init__(
        self, api: AsyncAPI, db: Any, store: Any, config: ProcessorConfig | None = None
    ) -> None:
        self.loop = api.loop
        factory = getattr(db, "async_factory", None)  # the backend's connect()
        self.raw: AsyncProcessor[Any] = AsyncProcessor(factory or unwrap(db), unwrap(store), config)

    def catch_up(self, projection: Any) -> int:
        return self.loop.call(self.raw.catch_up(ThreadedProjection(self.loop, projection)))

    def replay_dead_letters(self, projection: Any) -> int:
        threaded = ThreadedProjection(self.loop, projection)
        return self.loop.call(self.raw.replay_dead_letters(threaded))

    def run(self, projection: Any, *, stop: threading.Event | None = None) -> None:
        threaded = ThreadedProjection(self.loop, projection)
        self.loop.call_until(lambda event: self.raw.run(threaded, stop=event), stop)

    def close(self) -> None:
        self.loop.call(self.raw.close())

    def __enter__(self) -> Processor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runner:
    """The blocking runner API, run by an :class:`AsyncRunner` on the loop."""

    def __init__(self, api: AsyncAPI) -> None:
        self.loop = api.loop

    def run(
        self, runners: Sequence[ProjectionRunner], *, stop: threading.Event | None = None
    ) -> None:
        converted = [
            ProjectionRunner(ThreadedProjection(self.loop, r.projection), unwrap(r.processor))
            for r in runners
        ]
        self.loop.call_until(lambda event: AsyncRunner().run(converted, stop=event), stop)


class Connect:
    """The backend's ``connect``: a blocking view of a new asyncio connection.
    A facade processor given it opens its own connections with
    ``async_factory``, as an :class:`AsyncProcessor` given a factory does."""

    def __init__(self, api: AsyncAPI) -> None:
        self.api = api
        self.async_factory = api.open

    def __call__(self) -> Connection:
        return Connection(self.api.loop, self.api.loop.call(self.api.open()))


class AsyncAPI:
    """Opens asyncio connections with ``open_raw`` on a private loop and
    hands out the facade's views; closes whatever is left open."""

    def __init__(self, open_raw: Callable[[], Awaitable[Any]]) -> None:
        self.loop = EventLoopThread()
        self._open_raw = open_raw
        self._opened: list[Any] = []
        self.connect = Connect(self)

    async def open(self) -> Any:
        """A new asyncio connection (the processors' factory)."""
        raw = await self._open_raw()
        self._opened.append(raw)
        return raw

    def close(self) -> None:
        async def close_all() -> None:
            for raw in self._opened:
                with contextlib.suppress(Exception):  # already broken: it is gone either way
                    await maybe_await(raw.close())

        self.loop.call(close_all())
        self.loop.close()
