"""The in-process append signal: a store's ``append`` fires the signal of its
events table, and the idle projection processors of the same process that
read that table wake up (see :mod:`pupsourcing.projection._waiter`).

The store cannot know when the caller commits, so the signal fires on
append, before the commit; a woken processor polls and, finding nothing
yet, polls again shortly after. Processors of another table, or of the same
table name in another database, may wake for nothing: they poll once and
wait again.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # a blocking program need not import asyncio
    import asyncio


class Signal:
    """One events table's signal: a generation counter that each append
    bumps, a condition blocking waiters wait on, and the asyncio events of
    async waiters (set from any thread)."""

    def __init__(self) -> None:
        self.generation = 0
        self.condition = threading.Condition(threading.Lock())
        self._async: weakref.WeakKeyDictionary[asyncio.Event, asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary()
        )

    def fire(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()
            waiters = list(self._async.items())
        for event, loop in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: its waiter is gone
                self.forget(event)

    def wait(self, seen: int, timeout: float) -> None:
        """Block until the generation moves past ``seen`` or ``timeout`` passed."""
        with self.condition:
            if self.generation == seen:
                self.condition.wait(timeout)

    def register(self, event: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        """Have :meth:`fire` set ``event`` on ``loop``."""
        with self.condition:
            self._async[event] = loop

    def forget(self, event: asyncio.Event) -> None:
        with self.condition:
            self._async.pop(event, None)


_signals: dict[str, Signal] = {}
_lock = threading.Lock()


def signal(events_table: str) -> Signal:
    """The signal of ``events_table`` (created on first use by a waiter)."""
    found = _signals.get(events_table)
    if found is None:
        with _lock:
            found = _signals.setdefault(events_table, Signal())
    return found


def appended(events_table: str) -> None:
    """Wake the processors of this process waiting on ``events_table``."""
    found = _signals.get(events_table)
    if found is not None:
        found.fire()


class Listener(Protocol):
    """How a blocking store's driver waits for the database's own append
    notifications (PostgreSQL ``LISTEN``) on a processor's connection."""

    received: int
    """Notifications seen so far, whenever they arrived (also during queries)."""

    def listen(self, conn: Any) -> None:
        """Subscribe ``conn`` (outside a transaction; leaves it outside one)."""

    def unlisten(self, conn: Any) -> None:
        """Undo :meth:`listen` (outside a transaction; leaves it outside one)."""

    def wait(self, conn: Any, timeout: float) -> None:
        """Wait until a notification arrives (counted in :attr:`received`)
        or ``timeout`` seconds passed; raise if the connection broke."""


class AsyncListener(Protocol):
    """:class:`Listener` for an asyncio store's driver."""

    received: int

    async def listen(self, conn: Any) -> None: ...

    async def unlisten(self, conn: Any) -> None: ...

    async def wait(self, conn: Any, timeout: float) -> None: ...
