"""One task that polls the store head for every client: the events/s
figures come from its samples, and live feeds wait on it instead of each
polling the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from pupsourcing.console import _queries
from pupsourcing.console._readonly import Reader

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
        self._samples: deque[tuple[float, int]] = deque()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._sample()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        try:
            head = await self.reader.run(lambda conn: _queries.head(self.reader.db, conn))
        except Exception as exc:
            logger.warning("cannot read the store head: %s", exc)
            return
        now = time.monotonic()
        self._samples.append((now, head))
        while self._samples and self._samples[0][0] < now - _KEEP:
            self._samples.popleft()
        if head != self.head:
            self.head = head
            async with self._changed:
                self._changed.notify_all()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._sample()

    async def wait_beyond(self, position: int, timeout: float) -> bool:
        """Wait until the head passes ``position`` (at most ``timeout``
        seconds); whether it did."""
        if self.head > position:
            return True
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.head > position), timeout
                )
        return self.head > position

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
