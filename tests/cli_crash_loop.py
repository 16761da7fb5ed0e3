"""Projections for ``projections run --partitions 2`` whose partition 0
worker crashes as soon as it starts, so the supervisor gives up on it while
partition 1 is in a batch; that batch waits for the file ``$GATE``
(``cli_projections.Gated``).

As in ``cli_crashing``, the supervisor importing it restarts crashed
workers after 0.1 s instead of 1 s."""

from __future__ import annotations

import os
import sys

from cli_projections import Gated

if "--supervised" in sys.argv and sys.argv[sys.argv.index("--partition-key") + 1] == "0":
    os._exit(3)

from pupsourcing.cli import supervisor

supervisor.RESTART_DELAY = 0.1

__all__ = ["Gated"]
