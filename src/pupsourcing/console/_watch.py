"""One task that polls the store head for every client: the events/s
figures come from its samples, and live feeds wait on it instead of each
polling the database.

It probes the safe horizon (:class:`~pupsourcing.store.Horizon`) as
projections do, so the live feed never passes a position below which a
slower transaction could still commit an event. Where the probe is not
allowed (MySQL without the ``PROCESS`` privilege) it follows the head."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from pupsourcing.console._readonly import Reader
from pupsourcing.store import Horizon, Probe

logger = logging.getLogger("pupsourcing.console")

_KEEP = 600.0  # seconds of samples kept
_BUCKET = 10.0  # seconds per point of the events/s series


class HeadWatcher:
    """Samples the head every ``interval`` seconds (``MAX(global_position)``,
    one primary-key lookup) while running."""

    def __init__(self, reader: Reader, interval: float = 0.5) -> None:
        self.reader = reader
        self.interval = interval
        self.head = 0
        """The highest committed position seen."""
        self.horizon = Horizon()
        self._probing = True
        self.problem: str | None = None
        """Why the last sample failed (its warning was given); ``None`` when it did not."""
        self._notified = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._sampled = asyncio.Event()
        self.samples = 0
        """How many samples were taken (each ends an interval of shared reads)."""
        self.closing = False
        """Set by :meth:`end_feeds`: the live feeds end instead of waiting."""

    async def start(self) -> None:
        """Start sampling, unless started already; return once the head
        has been read. The lifespan's startup calls it, and each request
        that needs the head: a server runs no lifespan for an application
        mounted in another (Starlette's ``Mount``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop())
        await self._sampled.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def end_feeds(self) -> None:
        """End every live feed (the server is shutting down): each one
        waiting for a new event returns at once instead of holding its
        connection open until the server gives up waiting for it."""
        self.closing = True
        async with self._changed:
            self._changed.notify_all()

    @property
    def safe(self) -> int:
        """No event can still appear at or below this position."""
        return self.horizon.safe if self._probing else self.head

    def _probe(self, conn: Any) -> Probe:
        store = self.reader.db.store
        if self._probing:
            try:
                return store.probe_horizon(conn)
            except Exception as exc:
                if store.dialect.is_connection_error(exc):
                    raise
                # Only a probe the head can do without (MySQL without the
                # PROCESS privilege) is given up for good: when the store
                # cannot be read at all, this raises and it is probed again.
                head = store.head_position(conn)
                self._probing = False
                logger.warning(
                    "cannot probe the safe horizon (%s); the live views follow the store "
                    "head and may miss an event committed late at a lower position",
                    exc,
                )
                return Probe(head, frozenset())
        return Probe(store.head_position(conn), frozenset())

    async def _sample(self) -> None:
        self.samples += 1
        try:
            probe = await self.reader.run(self._probe)
        except Exception as exc:
            # Once per outage, not at every poll (twice a second).
            failing = self.problem is not None
            self.problem = self.reader.db.url.scrub(" ".join(str(exc).split()))
            self.problem = self.problem or type(exc).__name__
            logger.log(
                logging.DEBUG if failing else logging.WARNING,
                "cannot read the store head (%s); the live views wait until it can be read",
                self.problem,
            )
            if not failing:  # the live feeds say so
                await self._notify()
            return
        if self.problem is not None:
            self.problem = None
            logger.info("the store head can be read again")
            await self._notify()
        self.horizon.observe(probe)
        head = probe.visible
        now = time.monotonic()
        self._samples.append((now, head))
        while self._samples and self._samples[0][0] < now - _KEEP:
            self._samples.popleft()
        if head != self.head or self.safe != self._notified:
            self.head = head
            self._notified = self.safe
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _loop(self) -> None:
        try:
            await self._sample()
        finally:
            self._sampled.set()
        while True:
            await asyncio.sleep(self.interval)
            await self._sample()

    async def wait_beyond(self, position: int, timeout: float) -> bool:
        """Wait until the safe horizon passes ``position`` (at most
        ``timeout`` seconds, until :meth:`end_feeds`, or until
        :attr:`problem` changes); whether it did."""
        problem = self.problem

        def done() -> bool:
            return self.safe > position or self.closing or self.problem != problem

        if done():
            return self.safe > position
        # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation
        # that arrives as the condition is met (a closing feed would go on).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(done)
        return self.safe > position

    def rates(self) -> dict[str, object]:
        """Events per second (by global position) over the last 10 s, 1 min
        and 5 min, and a series of 10-second points over the last 5 min
        (oldest first), over as much of each window as the console has
        watched (``watched_seconds``)."""
        if not self._samples:
            return {"10s": None, "1m": None, "5m": None, "series": [], "watched_seconds": 0.0}
        now, head = self._samples[-1]

        def rate(window: float) -> float | None:
            start = next((s for s in self._samples if s[0] >= now - window), None)
            if start is None or now - start[0] < min(window / 2, 2.0):
                return None
            return round((head - start[1]) / (now - start[0]), 2)

        series: list[float] = []
        edge = now - 300.0
        previous: tuple[float, int] | None = None
        for t, h in self._samples:
            if t < edge:
                previous = (t, h)
                continue
            if previous is None:
                previous = (t, h)
            elif t - previous[0] >= _BUCKET:
                series.append(round((h - previous[1]) / (t - previous[0]), 2))
                previous = (t, h)
        return {
            "10s": rate(10.0),
            "1m": rate(60.0),
            "5m": rate(300.0),
            "series": series,
            "watched_seconds": round(now - self._samples[0][0], 1),
        }
