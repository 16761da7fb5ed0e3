"""A separate service: reads the relay's JetStream stream with a durable
consumer and keeps an ``orders`` read model in its own SQLite database.

It never touches the event store. JetStream delivers at least once (a message
whose ack was lost comes again), so the service records the stream sequence
it applied up to in the same transaction as the read model and skips what it
has already applied: each event changes the read model once. It acks after
committing.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import nats
from nats.aio.msg import Msg

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumed (
    consumer TEXT PRIMARY KEY,
    stream_seq INTEGER NOT NULL
);
"""


class OrdersService:
    def __init__(self, path: Path, durable: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)
        self.durable = durable

    def applied_up_to(self) -> int:
        row = self.db.execute(
            "SELECT stream_seq FROM consumed WHERE consumer = ?", (self.durable,)
        ).fetchone()
        return int(row[0]) if row else 0

    def apply(self, msg: Msg) -> bool:
        """Apply one message in one transaction; ``False`` if already applied."""
        seq = msg.metadata.sequence.stream
        if seq <= self.applied_up_to():
            return False
        headers = msg.headers or {}
        order_id = msg.subject.rsplit(".", 1)[1]  # escaped aggregate id; fine as a key
        kind = headers["Pupsourcing-Event-Type"]
        version = int(headers["Pupsourcing-Aggregate-Version"])
        with self.db:  # one transaction: the read model and the position
            if kind == "OrderPlaced":
                total = json.loads(msg.data)["total"]
                self.db.execute(
                    "INSERT INTO orders VALUES (?, 'placed', ?, ?)", (order_id, total, version)
                )
            elif kind == "OrderPaid":
                self.db.execute(
                    "UPDATE orders SET status = 'paid', version = ? WHERE order_id = ?",
                    (version, order_id),
                )
            self.db.execute(
                "INSERT INTO consumed VALUES (?, ?) "
                "ON CONFLICT (consumer) DO UPDATE SET stream_seq = excluded.stream_seq",
                (self.durable, seq),
            )
        return True

    async def consume(self, url: str, stream: str, subjects: str, *, idle: float = 1.0) -> int:
        """Apply messages until none has come for ``idle`` seconds; return
        how many changed the read model."""
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(subjects, durable=self.durable, stream=stream)
            applied = 0
            while True:
                try:
                    batch = await sub.fetch(100, timeout=idle)
                except TimeoutError:  # nats-py raises its own or asyncio's, by path
                    return applied
                for msg in batch:
                    applied += self.apply(msg)
                    await msg.ack()  # after the commit: a crash before it means redelivery
        finally:
            await nc.close()

    def orders(self) -> list[tuple[str, str, int, int]]:
        return self.db.execute("SELECT * FROM orders ORDER BY order_id").fetchall()

    def close(self) -> None:
        self.db.close()
