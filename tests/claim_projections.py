"""The projection the self-balancing worker tests run with ``--claim``.

``ClaimRecorder`` writes one row per event it handles through ``tx`` into
``claim_handled`` (no unique key: an event handled twice is two rows, which
the tests count by event id), with the handling process's pid.
``CLAIM_DELAY`` (seconds per event) slows it down.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from pupsourcing import PersistedEvent

TABLE = "claim_handled"
CREATE_TABLE = f"CREATE TABLE {TABLE} (event_id VARCHAR(36) NOT NULL, worker_pid INT NOT NULL)"


class ClaimRecorder:
    name = "claimed"

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        sql = f"INSERT INTO {TABLE} (event_id, worker_pid) VALUES (?, ?)"
        if not isinstance(tx, sqlite3.Connection):
            sql = sql.replace("?", "%s")
        cursor = tx.cursor()
        try:
            cursor.execute(sql, (str(event.event_id), os.getpid()))
        finally:
            cursor.close()
        delay = float(os.environ.get("CLAIM_DELAY", "0"))
        if delay:
            time.sleep(delay)


recorder = ClaimRecorder()
