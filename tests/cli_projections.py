"""Projections the command-line tests run through ``projections run``.

``Recorder`` writes one row per event through ``tx`` into ``handled_events``,
whose primary key is the global position: an event handled twice fails the
batch, an event skipped is a missing row. ``RECORDER_DELAY`` (seconds per
event) slows it down so tests can interrupt it mid-way.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from pupsourcing import PersistedEvent

TABLE = "handled_events"
CREATE_TABLE = (
    f"CREATE TABLE {TABLE} (global_position BIGINT PRIMARY KEY, "
    "aggregate_id VARCHAR(255) NOT NULL, worker_pid INT NOT NULL)"
)


def _execute(tx: Any, sql: str, params: tuple[Any, ...]) -> None:
    if not isinstance(tx, sqlite3.Connection):
        sql = sql.replace("?", "%s")
    cursor = tx.cursor()
    try:
        cursor.execute(sql, params)
    finally:
        cursor.close()


class Recorder:
    name = "recorder"

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        _execute(
            tx,
            f"INSERT INTO {TABLE} (global_position, aggregate_id, worker_pid) VALUES (?, ?, ?)",
            (event.global_position, event.aggregate_id, os.getpid()),
        )
        delay = float(os.environ.get("RECORDER_DELAY", "0"))
        if delay:
            time.sleep(delay)


class Gated(Recorder):
    """Records an event once the file ``$GATE`` exists (or after 30 s): a
    batch the test ends."""

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        super().handle(event, tx)


def make_recorder() -> Recorder:
    """A zero-argument factory, as ``cli_projections:make_recorder``."""
    return Recorder()


recorder = Recorder()
"""An instance, as ``cli_projections:recorder``."""


class Counter:
    """Counts events in memory; only its checkpoint is visible."""

    name = "counter"
    aggregate_types = ("Order",)

    def __init__(self) -> None:
        self.seen = 0

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen += 1


class Failing:
    """Fails on the event whose aggregate id is ``poison``."""

    name = "failing"

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        if event.aggregate_id == "poison":
            raise RuntimeError("cannot handle poison")


class NeedsArguments:
    def __init__(self, table: str) -> None:
        self.table = table


not_a_projection = 42


class AsyncHandle:
    """An asyncio projection: ``projections run`` runs blocking ones."""

    name = "async_handle"

    async def handle(self, event: PersistedEvent, tx: Any) -> None:
        pass


class Fixable:
    """Fails on the event whose aggregate id is ``poison`` until
    ``$POISON_FIXED`` is set; records the events it handles like
    :class:`Recorder`."""

    name = "fixable"

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        if event.aggregate_id == "poison" and not os.environ.get("POISON_FIXED"):
            raise RuntimeError("cannot handle poison")
        _execute(
            tx,
            f"INSERT INTO {TABLE} (global_position, aggregate_id, worker_pid) VALUES (?, ?, ?)",
            (event.global_position, event.aggregate_id, os.getpid()),
        )


class GatedFixable(Fixable):
    """:class:`Fixable` that, on each event, first creates the file
    ``$ENTERED`` and then waits for ``$GATE`` (or 30 s): a replay the test
    holds in its first transaction."""

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        open(os.environ["ENTERED"], "a").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        super().handle(event, tx)
