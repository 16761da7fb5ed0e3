"""Push wake-up for the asyncio processor: :class:`AsyncWaiter` waits as
:class:`pupsourcing.projection._waiter.Waiter` does, on the same
:class:`~pupsourcing.projection._waiter._Wakes` (kept apart so a blocking
program never imports asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from pupsourcing.projection._waiter import _Wakes
from pupsourcing.projection.batch import Logger
from pupsourcing.store._appended import AsyncListener


class AsyncWaiter:
    """Waits for :class:`~pupsourcing.aio.AsyncProcessor` (and so the relay)."""

    def __init__(
        self,
        events_table: str,
        listener: AsyncListener | None,
        logger: Logger,
        *,
        push: bool = True,
        poll_interval: float | None = None,
    ) -> None:
        self._wakes = _Wakes(events_table, listener, logger, poll_interval)
        self._listener = listener
        self._push = push
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def release(self, conn: Any) -> None:
        """``UNLISTEN`` on ``conn`` if it listens (the processor stops)."""
        if not self._wakes.stops_listening(conn):
            return
        assert self._listener is not None
        try:
            await self._listener.unlisten(conn)
        except Exception:  # a lost connection: nothing to undo
            with contextlib.suppress(Exception):
                await conn.rollback()

    async def wait(self, conn: Any, seconds: float, stop: asyncio.Event, label: str = "") -> bool:
        """Wait up to ``seconds``, less when woken; whether ``stop`` is set.
        ``label`` names the projection in what is logged."""
        if not self._push:
            return await pause(seconds, stop)
        wakes = self._wakes
        if wakes.should_listen(conn):
            assert self._listener is not None
            try:
                await self._listener.listen(conn)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                wakes.listened(conn, exc, label)
            else:
                wakes.listened(conn, None)
                return stop.is_set()
        listening = wakes.is_listening(conn)
        deadline = wakes.deadline(seconds, listening)
        if not listening:
            event = self._appends_event()
            event.clear()
        while not stop.is_set():
            if listening and wakes.unheard(conn, label):
                await self.release(conn)
                listening = False
                event = self._appends_event()
                event.clear()
            remaining = wakes.time_left(deadline, listening)
            if remaining is None:
                return False
            if not listening:
                await _first([stop.wait(), event.wait()], remaining)
                event.clear()
                continue
            assert self._listener is not None
            try:
                await _first([stop.wait(), self._listener.wait(conn, remaining)], None)
            except Exception as exc:
                wakes.lost(conn, exc)
                return stop.is_set()
        return True

    def _appends_event(self) -> asyncio.Event:
        """The event in-process appends set (from any thread), one per event
        loop: the processor may run again under another one."""
        loop = asyncio.get_running_loop()
        if self._event is None or self._loop is not loop:
            if self._event is not None:
                self._wakes.signal.forget(self._event)
            self._event, self._loop = asyncio.Event(), loop
            self._wakes.signal.register(self._event, loop)
        return self._event


async def pause(seconds: float, stop: asyncio.Event | None) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; whether it is."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()


async def _first(waits: list[Awaitable[Any]], timeout: float | None) -> None:
    """Wait until the first of ``waits`` is done or ``timeout`` passed; cancel
    the rest. Raises what the first raised."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
