"""Scoped projections (read models of some aggregate types) beside a global one.

Run: ``python main.py`` (uses ``scoped_projections.db`` (or ``$PUPSOURCING_DB``) in the current
directory, fresh on every run).

- ``UserCount`` wants only ``User`` aggregates, ``OrderRevenue`` only ``Order``
  aggregates of the ``Sales`` context: the processor filters in SQL, so they
  never even fetch the other events.
- ``Outbox`` has no scope and receives every event, as an integration
  publisher must. It writes the messages to an outbox table through ``tx``,
  in the same transaction as its checkpoint; a relay would send them on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///scoped_projections.db"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")
FILE = Path(DB.url.path or "")


class UserCount:
    name = "user_count"
    aggregate_types = ("User",)

    def __init__(self) -> None:
        self.users = 0

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        self.users += 1


class OrderRevenue:
    name = "order_revenue"
    aggregate_types = ("Order",)
    bounded_contexts = ("Sales",)

    def __init__(self) -> None:
        self.cents = 0

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        self.cents += json.loads(event.payload)["cents"]


class Outbox:
    name = "system.integration.outbox.v1"  # no aggregate_types: every event

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        topic = f"{event.bounded_context}.{event.aggregate_type}.{event.event_type}"
        tx.execute(
            "INSERT INTO outbox (event_id, topic, body) VALUES (?, ?, ?)",
            (str(event.event_id), topic, event.payload),
        )


def main() -> None:
    for stale in (FILE, Path(f"{FILE}-wal"), Path(f"{FILE}-shm")):
        stale.unlink(missing_ok=True)
    store = SQLiteStore()
    db = DB.connect()
    store.create_schema(db)
    db.execute("CREATE TABLE outbox (event_id TEXT PRIMARY KEY, topic TEXT, body BLOB)")

    def append(context: str, kind: str, aggregate_id: str, event_type: str, **data: object) -> None:
        event = Event(context, kind, aggregate_id, event_type, json.dumps(data).encode())
        store.append(db, ExpectedVersion.no_stream(), [event])

    for name in ("alice", "bob", "carol"):
        append("Identity", "User", name, "UserRegistered")
    for n, cents in enumerate((9999, 14999, 4999)):
        append("Sales", "Order", f"order-{n}", "OrderPlaced", cents=cents)
    append("Catalog", "Product", "p-1", "ProductAdded")
    append("Catalog", "Product", "p-2", "ProductAdded")
    db.commit()

    users, revenue, outbox = UserCount(), OrderRevenue(), Outbox()
    for projection in (users, revenue, outbox):
        with Processor(DB.connect, store) as processor:
            handled = processor.catch_up(projection)
        print(
            f"{projection.name:<30} handled {handled} events, "
            f"checkpoint {store.get_checkpoint(db, projection.name)}"
        )

    print(f"users: {users.users}, revenue: {revenue.cents / 100:.2f}")
    topics = [row[0] for row in db.execute("SELECT topic FROM outbox ORDER BY rowid")]
    print(f"outbox: {len(topics)} messages, e.g. {topics[0]!r} and {topics[-1]!r}")
    assert (users.users, revenue.cents, len(topics)) == (3, 29997, 8)
    db.close()


if __name__ == "__main__":
    main()
