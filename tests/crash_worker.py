"""A projection worker process for ``test_crash_recovery.py`` to kill.

    python crash_worker.py URL NAME TABLE_SUFFIX PAUSE_AT SLOW

Catches the projection ``NAME`` up on the store at ``URL``. Its handler writes
a read model through ``tx``: a row per event in ``applied<suffix>`` and a
running balance per account in ``balances<suffix>``. With ``PAUSE_AT`` > 0
the worker prints ``paused`` after handling that many events (inside an open
batch, its writes not committed) and waits to be killed; ``SLOW`` seconds are
slept per event. Prints ``done N`` when it caught up.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pupsourcing import PersistedEvent
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.urls import database

BATCH_SIZE = 10


class Ledger:
    def __init__(self, name: str, suffix: str, mark: str, pause_at: int, slow: float) -> None:
        self.name = name
        self.suffix = suffix
        self.mark = mark
        self.pause_at = pause_at
        self.slow = slow
        self.handled = 0

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        m, suffix = self.mark, self.suffix
        cursor = tx.cursor()
        cursor.execute(
            f"INSERT INTO applied{suffix} (position, aggregate_id) VALUES ({m}, {m})",
            (event.global_position, event.aggregate_id),
        )
        cursor.execute(
            f"UPDATE balances{suffix} SET total = total + {m} WHERE account = {m}",
            (json.loads(event.payload)["amount"], event.aggregate_id),
        )
        cursor.close()
        self.handled += 1
        if self.slow:
            time.sleep(self.slow)
        if self.handled == self.pause_at:
            print("paused", event.global_position, flush=True)
            time.sleep(120)  # the test kills this process now
            raise SystemExit("not killed")


def main() -> None:
    url, name, suffix, pause_at, slow = sys.argv[1:6]
    db = database(url)
    mark = "?" if url.startswith("sqlite") else "%s"
    ledger = Ledger(name, suffix, mark, int(pause_at), float(slow))
    config = ProcessorConfig(batch_size=BATCH_SIZE, poll_interval=0.01)
    with Processor(db.connect, db.store, config) as processor:
        print("done", processor.catch_up(ledger), flush=True)


if __name__ == "__main__":
    main()
