"""Push wake-up: how an idle processor waits for the next poll.

A processor with nothing to do waits up to ``poll_interval`` (the plan's
``Pause(..., wake=True)``), and wakes early when an append may have made
something to do:

* where the store's driver can listen for the database's own append
  notifications (PostgreSQL; see ``store._push_listener``), on those,
  received on the processor's own connection: they arrive when the append
  commits, whatever process or connection made it;
* elsewhere (or when ``LISTEN`` fails, as on a standby), on the appends
  made through a store of this process (:mod:`pupsourcing.store._appended`).
  These fire before the appender commits, so after such a wake a poll that
  finds nothing is retried after the short pauses of :data:`QUICK_RETRIES`.

A connection whose ``LISTEN`` succeeds may still never receive a
notification: through a pooler in transaction mode (PgBouncer) it listens
on a server connection that is not its own between transactions. The
listener probes such a connection once (see
:mod:`pupsourcing.adapters.postgres._listen`); a probe that has not arrived
within :data:`PROBE_WAIT` logs one warning, and the processor waits as
where it cannot ``LISTEN``.

Appends that notify nothing (the Go library's) are found by the poll every
``poll_interval``, as without push. :class:`Waiter` serves the blocking
processor, :class:`pupsourcing.aio._waiter.AsyncWaiter` the asyncio one;
both share :class:`_Wakes`, which decides whether there is reason to poll
now.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any

from pupsourcing._text import one_line
from pupsourcing.projection.batch import Logger
from pupsourcing.store._appended import Listener, signal

QUICK_RETRIES = (0.005, 0.02, 0.1, 0.25, 0.5)
"""Pauses (seconds) before the polls that follow a wake by an in-process
append, while they find nothing: the appender may not have committed yet
(a busy machine may take a while; five quick polls cost little)."""
STOP_CHECK = 0.05
"""The longest a blocking processor waits before it looks at ``stop`` again."""
PROBE_WAIT = 2.0
"""Seconds a listening processor gives its probe notification to arrive
once sent (milliseconds where notifications are delivered)."""
PROBE_CHECK = 0.25
"""How often a listening processor looks whether its probe was sent."""


class _Wakes:
    """Whether anything happened since the processor last polled, and which
    connection listens."""

    def __init__(
        self,
        events_table: str,
        listener: object | None,
        logger: Logger,
        poll_interval: float | None = None,
    ) -> None:
        self.signal = signal(events_table)
        self.seen_appends = self.signal.generation
        self.listener = listener
        self.received = 0
        self.listening: weakref.ref[Any] | None = None
        self.refused: weakref.ref[Any] | None = None
        self.retries: list[float] = []
        self.logger = logger
        self.poll_interval = poll_interval
        self.probing = False
        """Whether the listener's probe has neither arrived nor failed yet."""
        self.unheard_before = False
        """Whether a probe went unheard: no later connection listens."""

    def is_listening(self, conn: Any) -> bool:
        return self.listening is not None and self.listening() is conn

    def should_listen(self, conn: Any) -> bool:
        """Whether to ``LISTEN`` on ``conn`` now (a new connection that has
        not refused). Never again once a probe went unheard: the processor's
        connections go through the same pooler, where each ``LISTEN`` stays
        on a pooled server connection, delivering to whichever client gets it."""
        if self.listener is None or conn is None or self.is_listening(conn):
            return False
        if self.unheard_before:
            return False
        return self.refused is None or self.refused() is not conn

    def listened(self, conn: Any, error: Exception | None, label: str = "") -> None:
        """``conn`` listens now, or could not (``error``); ``label`` names the
        projection in the warning."""
        if error is None:
            self.listening = weakref.ref(conn)
            self.received = getattr(self.listener, "received", 0)
            self.probing = getattr(self.listener, "probe", None) is not None
            return
        self.listening = None
        self.refused = weakref.ref(conn)
        self.logger.warning(
            "projection %s cannot LISTEN for appends (%s); it polls and wakes "
            "on appends made in this process only",
            label or "processor",
            one_line(error),
        )

    def unheard(self, conn: Any, label: str) -> bool:
        """Whether the listener's probe failed to arrive in time on ``conn``:
        then the warning is logged and ``conn`` waits as one that cannot
        ``LISTEN`` (the caller unsubscribes it)."""
        if not self.probing:
            return False
        listener = self.listener
        error = getattr(listener, "unprobed", None)
        if error is not None or getattr(listener, "probe", None) is None:
            self.probing = False  # it arrived, or could not be sent
            if error is not None:
                self.logger.warning(
                    "projection %s connects through a connection pooler: push wake-ups "
                    "reach it only if the pooler keeps its session on one server "
                    "connection (session pooling), and checking failed (%s); else it "
                    "finds other processes' appends at its polls, every %s s (poll_interval)",
                    label,
                    error,
                    self.poll_interval,
                )
            return False
        sent = getattr(listener, "probe_sent", None)
        if sent is None or time.monotonic() < sent + PROBE_WAIT:
            return False
        self.probing = False
        self.refused = weakref.ref(conn)
        self.unheard_before = True  # (no LISTEN on later connections: one warning)
        self.logger.warning(
            "projection %s: push wake-ups are not delivered on this connection (LISTEN "
            "succeeded, but a test notification did not arrive within %.0f s: a connection "
            "pooler in transaction mode, such as PgBouncer's pool_mode = transaction?); it "
            "finds other processes' appends at its polls, every %s s (poll_interval)",
            label,
            PROBE_WAIT,
            self.poll_interval,
        )
        return True

    def stops_listening(self, conn: Any) -> bool:
        """Whether ``conn`` listens, to be unsubscribed now (the processor
        stops: the connection may be the caller's, or stay open unread)."""
        if not self.is_listening(conn):
            return False
        self.listening = None
        return True

    def lost(self, conn: Any, error: Exception) -> None:
        """Waiting on ``conn`` failed: the next poll will tell why. A lost
        connection is replaced; one that still works only polls from now
        on (listening again would fail again, at once, in a loop)."""
        self.logger.debug("waiting for append notifications failed", exc_info=error)
        self.listening = None
        self.refused = weakref.ref(conn)

    def woken(self, listening: bool) -> bool:
        """Whether to poll now, and take note that it will."""
        if listening:
            received: int = getattr(self.listener, "received", 0)
            if received != self.received:
                self.received = received
                return True
            return False
        generation = self.signal.generation
        if generation != self.seen_appends:
            self.seen_appends = generation
            self.retries = list(QUICK_RETRIES)
            return True
        return False

    def time_left(self, deadline: float, listening: bool) -> float | None:
        """Seconds left to wait before ``deadline``; ``None`` when the wait
        is over (woken, or the deadline passed)."""
        if self.woken(listening):
            return None
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            return None
        if listening and self.probing:  # wake to check on the probe
            sent = getattr(self.listener, "probe_sent", None)
            check = PROBE_CHECK if sent is None else sent + PROBE_WAIT - now
            remaining = min(remaining, max(check, 0.0))
        return remaining

    def deadline(self, seconds: float, listening: bool) -> float:
        if self.retries and not listening:
            seconds = min(seconds, self.retries.pop(0))
        return time.monotonic() + seconds


class Waiter:
    """Waits for the blocking :class:`~pupsourcing.projection.Processor`.
    ``push=False`` waits the whole ``poll_interval`` (as without push)."""

    def __init__(
        self,
        events_table: str,
        listener: Listener | None,
        logger: Logger,
        *,
        push: bool = True,
        poll_interval: float | None = None,
    ) -> None:
        self._wakes = _Wakes(events_table, listener, logger, poll_interval)
        self._listener = listener
        self._push = push

    def release(self, conn: Any) -> None:
        """``UNLISTEN`` on ``conn`` if it listens (the processor stops)."""
        if not self._wakes.stops_listening(conn):
            return
        assert self._listener is not None
        try:
            self._listener.unlisten(conn)
        except Exception:  # a lost connection: nothing to undo
            with contextlib.suppress(Exception):
                conn.rollback()

    def wait(self, conn: Any, seconds: float, stop: threading.Event, label: str = "") -> bool:
        """Wait up to ``seconds``, less when woken; whether ``stop`` is set.
        ``label`` names the projection in what is logged."""
        if not self._push:
            return stop.wait(seconds)
        wakes = self._wakes
        if wakes.should_listen(conn):
            assert self._listener is not None
            try:
                self._listener.listen(conn)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    conn.rollback()
                wakes.listened(conn, exc, label)
            else:
                wakes.listened(conn, None)
                return stop.is_set()  # poll once more: an append may have come before LISTEN
        listening = wakes.is_listening(conn)
        deadline = wakes.deadline(seconds, listening)
        while not stop.is_set():
            if listening and wakes.unheard(conn, label):
                self.release(conn)
                listening = False
            remaining = wakes.time_left(deadline, listening)
            if remaining is None:
                return False
            timeout = min(remaining, STOP_CHECK)
            if not listening:
                wakes.signal.wait(wakes.seen_appends, timeout)
                continue
            assert self._listener is not None
            try:
                self._listener.wait(conn, timeout)
            except Exception as exc:
                wakes.lost(conn, exc)
                return stop.is_set()
        return True
