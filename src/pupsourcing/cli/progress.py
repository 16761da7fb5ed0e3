"""How far running projections are: a progress bar per projection on a
terminal, periodic log lines otherwise.

The monitor reads the checkpoints and the store head on its own connection,
so it sees every worker process of a partitioned projection the same way.
A projection's position is its slowest partition's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pupsourcing.cli._db import close_quietly
from pupsourcing.cli._output import rich_for
from pupsourcing.cli._text import duration
from pupsourcing.cli.console import Console
from pupsourcing.urls import Database

logger = logging.getLogger("pupsourcing.cli.progress")

RATE_WINDOW = 10.0
"""Seconds of samples the rate is averaged over."""

TERMINAL_REFRESH = 0.5
BAR_WIDTH = 24


@dataclass
class _Tracked:
    name: str
    checkpoints: tuple[str, ...]
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    logged_caught_up_at: int | None = None
    """The position last logged as caught up; ``None`` while behind."""

    def record(self, now: float, position: int) -> None:
        self.samples.append((now, position))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        """Positions per second over the last samples; ``None`` until known."""
        if len(self.samples) < 2:
            return None
        (t0, p0), (t1, p1) = self.samples[0], self.samples[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One projection's progress at one moment."""

    name: str
    position: int
    head: int
    rate: float | None

    @property
    def caught_up(self) -> bool:
        return self.position >= self.head

    @property
    def fraction(self) -> float:
        return 1.0 if self.head <= 0 else min(self.position / self.head, 1.0)

    @property
    def eta(self) -> float | None:
        if self.caught_up:
            return 0.0
        if not self.rate or self.rate <= 0:
            return None
        return (self.head - self.position) / self.rate

    def counts(self) -> str:
        return f"{self.position:,}/{self.head:,}"

    def status(self) -> str:
        """``caught up``, or the rate and the time left."""
        return "caught up" if self.caught_up else self._rate_and_eta()

    def _rate_and_eta(self) -> str:
        rate = "-" if self.rate is None else f"{self.rate:,.0f} events/s"
        eta = "unknown" if self.eta is None else duration(self.eta)
        return f"{rate}, ETA {eta}"

    def bar(self, name_width: int) -> str:
        filled = int(self.fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"{self.name:<{name_width}} [{bar}] {self.fraction:6.1%} {self.counts()}"
        return f"{line}  {self.status()}"

    def log_line(self) -> str:
        if self.caught_up:
            return f"{self.name}: caught up at position {self.position:,}"
        return (
            f"{self.name}: position {self.position:,} of {self.head:,} ({self.fraction:.1%}), "
            f"{self._rate_and_eta()}"
        )


class ProgressMonitor:
    """Samples checkpoints every ``interval`` seconds (faster on a terminal)
    and reports through ``console``.

    ``tracked`` maps each projection name to the checkpoints its workers
    keep (one, or one per partition).
    """

    def __init__(
        self,
        db: Database,
        tracked: Mapping[str, Sequence[str]],
        console: Console,
        *,
        interval: float = 10.0,
    ) -> None:
        self.db = db
        self.console = console
        self.interval = TERMINAL_REFRESH if console.tty else interval
        self._tracked = [_Tracked(name, tuple(names)) for name, names in tracked.items()]
        self._name_width = max((len(name) for name in tracked), default=0)
        self._rich = rich_for(console.stream) if console.tty else None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pupsourcing-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self.tick()  # the state it stopped in
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None
        self.console.finish()

    def _loop(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.interval):
                return

    def _read(self) -> tuple[int, dict[str, int]] | None:
        store = self.db.store
        try:
            if self._conn is None:
                self._conn = self.db.connect()
            head = store.head_position(self._conn)
            positions = {c.name: c.position for c in store.list_checkpoints(self._conn)}
            self._conn.rollback()  # a fresh snapshot next time (MySQL's REPEATABLE READ)
        except Exception as exc:
            logger.debug("reading progress failed: %s", exc)
            if self._conn is not None:
                close_quietly(self._conn)
                self._conn = None
            return None
        return head, positions

    def snapshots(self) -> list[Snapshot] | None:
        """Sample now; ``None`` when the database could not be read."""
        read = self._read()
        if read is None:
            return None
        head, positions = read
        now = time.monotonic()
        result = []
        for tracked in self._tracked:
            position = min(positions.get(name, 0) for name in tracked.checkpoints)
            tracked.record(now, position)
            result.append(Snapshot(tracked.name, position, head, tracked.rate))
        return result

    def tick(self) -> None:
        snapshots = self.snapshots()
        if snapshots is None:
            return
        if self.console.tty:
            if self._rich is not None:
                rows = [
                    (s.name, s.fraction, s.counts(), s.status(), s.caught_up) for s in snapshots
                ]
                self.console.show(self._rich.bars(rows, self.console.width), fitted=True)
            else:
                self.console.show([s.bar(self._name_width) for s in snapshots])
            return
        for snapshot, tracked in zip(snapshots, self._tracked, strict=True):
            # Caught up at a new position is news even when no sample saw the
            # projection behind (new events handled between two samples).
            if not snapshot.caught_up or tracked.logged_caught_up_at != snapshot.position:
                logger.info(snapshot.log_line())
            tracked.logged_caught_up_at = snapshot.position if snapshot.caught_up else None
