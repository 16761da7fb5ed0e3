"""Throttled outage logging: the level of each line, the messages left to the callers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """Something failing over and over (a lost database, say), from its first
    failure until it works again. :meth:`failed` answers WARNING for the
    first failure and DEBUG for the ones after it, with WARNING again once
    ``warn_every`` seconds passed since the last (``math.inf``: once per
    outage); :meth:`ended` answers whether an outage ended, for the caller's
    INFO line. Not thread-safe."""

    def __init__(self, warn_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.warn_every = warn_every
        self._clock = clock
        self.failures = 0
        """Failures in this outage; 0 when there is none."""
        self.lasted = 0.0
        """Seconds from the outage's first failure to its latest."""
        self._since = self._warned = 0.0

    def failed(self) -> int:
        """Count a failure; the level to log it at."""
        now = self._clock()
        self.failures += 1
        if self.failures == 1:
            self._since = now
        self.lasted = now - self._since
        if self.failures > 1 and now - self._warned < self.warn_every:
            return logging.DEBUG
        self._warned = now
        return logging.WARNING

    def ended(self) -> float | None:
        """It worked: the seconds the outage lasted, ``None`` if there was none."""
        if not self.failures:
            return None
        self.failures = 0
        return self._clock() - self._since
