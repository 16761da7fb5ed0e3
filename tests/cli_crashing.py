"""A projection module whose supervised workers crash as soon as they start
(the supervisor itself imports it fine): ``projections run --partitions``
must give up on them."""

from __future__ import annotations

import os
import sys
from typing import Any

if "--supervised" in sys.argv:
    os._exit(3)


class Projection:
    name = "crashing"

    def handle(self, event: Any, tx: Any) -> None:
        pass
