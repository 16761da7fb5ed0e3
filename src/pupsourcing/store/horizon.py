"""The safe horizon: how far a projection may read without ever skipping an event.

Global positions are handed out when a transaction inserts, but rows become
visible when it commits, so a transaction holding a lower position can commit
after one holding a higher position. A reader that moved its checkpoint past
the still-invisible lower position would skip that event forever.

The horizon is the highest position at or below which no event can appear any
more. Each database supplies a *probe* (see ``Dialect.horizon_probe``): the
highest committed position it can see, ``visible``, read first, and then the
set of transactions that might still be writing events, ``writers``. Every
position at or below ``visible`` was handed out before ``visible`` was, so its
transaction had already started writing when the probe looked; it is either
finished or among ``writers``. Once a later probe shows that all of those
writers have ended, nothing at or below ``visible`` can still appear: the
horizon moves there, past rolled-back positions as well, as soon as the
database shows the transactions ended, without any time-out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Probe:
    """One look at the events table.

    ``visible``: highest committed position. ``writers``: identities of the
    transactions (other than the prober's own) that may be writing events,
    observed after ``visible`` was read; ``None`` when this probe could not
    tell (the horizon then waits for a probe that can).
    """

    visible: int
    writers: frozenset[Hashable] | None


@dataclass(slots=True)
class _Fence:
    position: int
    writers: frozenset[Hashable]


class Horizon:
    """Tracks the safe horizon from a sequence of probes. Pure logic, no I/O."""

    MAX_FENCES = 64

    def __init__(self) -> None:
        self.safe = 0
        """No event at or below this position can still appear."""
        self.visible = 0
        """The highest committed position seen so far."""
        self._fences: deque[_Fence] = deque()

    def observe(self, probe: Probe) -> None:
        self.visible = max(self.visible, probe.visible)
        writers = probe.writers
        if writers is None:
            return
        # A fence resolves once none of its writers is still running. A writer
        # of an older fence that is still running also belongs to every newer
        # fence, so fences resolve in order.
        while self._fences and self._fences[0].writers.isdisjoint(writers):
            self.safe = max(self.safe, self._fences.popleft().position)
        if probe.visible <= self.safe:
            return
        if not writers:
            self.safe = probe.visible
            self._fences.clear()
            return
        fence = _Fence(probe.visible, writers)
        if self._fences and len(self._fences) >= self.MAX_FENCES:
            # Replacing the newest fence with a later one is safe: the later one
            # can only resolve after the one it replaces would have.
            self._fences[-1] = fence
        elif not self._fences or self._fences[-1].position < probe.visible:
            self._fences.append(fence)
