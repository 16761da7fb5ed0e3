"""A projection module whose supervised workers crash as soon as they start
(the supervisor itself imports it fine): ``projections run --partitions``
must give up on them.

The supervisor importing it restarts crashed workers after 0.1 s instead of
1 s (doubling each time, as always): giving up after five crashes then takes
about two seconds instead of sixteen."""

from __future__ import annotations

import os
import sys
from typing import Any

if "--supervised" in sys.argv:
    os._exit(3)

from pupsourcing.cli import supervisor

supervisor.RESTART_DELAY = 0.1


class Projection:
    name = "crashing"

    def handle(self, event: Any, tx: Any) -> None:
        pass
