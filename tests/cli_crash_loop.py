"""Projections for ``projections run --partitions 2`` whose partition 0
worker crashes as soon as it starts, so the supervisor gives up on it while
partition 1 is in a batch; that batch waits for the file ``$GATE``.

As in ``cli_crashing``, the supervisor importing it restarts crashed
workers after 0.1 s instead of 1 s."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from cli_projections import Recorder

if "--supervised" in sys.argv and sys.argv[sys.argv.index("--partition-key") + 1] == "0":
    os._exit(3)

from pupsourcing.cli import supervisor

supervisor.RESTART_DELAY = 0.1


class Gated(Recorder):
    """Records an event once ``$GATE`` exists (or after 30 s)."""

    def handle(self, event: Any, tx: Any) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        super().handle(event, tx)
