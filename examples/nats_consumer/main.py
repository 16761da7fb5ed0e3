"""Publish the event store to NATS JetStream and build a read model in a
separate service from the stream.

Run: ``python main.py`` (``--quick`` for fewer orders), with a JetStream
server at ``$PUPSOURCING_NATS`` (default ``nats://127.0.0.1:4222``). Uses
``shop.db`` (the event store; ``$PUPSOURCING_DB``, a SQLite URL, names another)
and ``orders.db`` (the service's read model) in the current directory, fresh
on every run, and a JetStream stream with a random name, deleted at the end.

1. The shop appends ``OrderPlaced`` and ``OrderPaid`` events.
2. A :class:`~pupsourcing.relay.NatsRelay` publishes them to the stream (what
   ``pupsourcing relay nats`` runs), each exactly once.
3. The orders service (``consumer.py``) reads the stream with a durable
   consumer into its own SQLite database.
4. More orders; the relay goes on from its checkpoint and the service from its
   durable consumer: the read model matches the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import nats
from consumer import OrdersService

from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.sqlite import AsyncSQLiteStore, SQLiteStore, connect, connect_async
from pupsourcing.relay import NatsRelay
from pupsourcing.urls import DatabaseURL, parse_url

NATS_URL = os.environ.get("PUPSOURCING_NATS", "nats://127.0.0.1:4222")
# PUPSOURCING_DB names the store (examples/README.md, "Settings"): SQLite here.
URL: DatabaseURL = parse_url(os.environ.get("PUPSOURCING_DB", "sqlite:///shop.db"))
if URL.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {URL}")
SHOP, READ_MODEL = Path(URL.path or "shop.db"), Path("orders.db")


def place_orders(first: int, count: int) -> None:
    store, conn = SQLiteStore(), connect(SHOP)
    for n in range(first, first + count):
        order = f"order-{n:03d}"
        placed = Event("Shop", "Order", order, "OrderPlaced", json.dumps({"total": n}).encode())
        store.append(conn, ExpectedVersion.no_stream(), [placed])
        if n % 2 == 0:
            store.append(
                conn, ExpectedVersion.exact(1), [Event("Shop", "Order", order, "OrderPaid", b"{}")]
            )
        conn.commit()
    conn.close()


async def main(orders: int) -> None:
    for path in (SHOP, READ_MODEL):
        path.unlink(missing_ok=True)
    conn = connect(SHOP)
    SQLiteStore().create_schema(conn)
    conn.commit()
    conn.close()
    stream, prefix = f"shop_{uuid.uuid4().hex[:8]}", f"shop{uuid.uuid4().hex[:8]}"
    relay = NatsRelay(
        lambda: connect_async(SHOP),
        AsyncSQLiteStore(),
        stream=stream,
        servers=NATS_URL,
        subject_prefix=prefix,
        name="shop",
    )
    service = OrdersService(READ_MODEL, durable="orders")
    try:
        place_orders(0, orders)
        print(f"relayed {await relay.catch_up()} events to stream {stream}")
        applied = await service.consume(NATS_URL, stream, f"{prefix}.>")
        print(f"orders service applied {applied} messages")

        place_orders(orders, orders)
        print(f"relayed {await relay.catch_up()} more events (from checkpoint relay_shop)")
        applied = await service.consume(NATS_URL, stream, f"{prefix}.>")
        print(f"orders service applied {applied} more (its durable consumer resumed)")

        rows = service.orders()
        paid = sum(1 for row in rows if row[1] == "paid")
        print(f"read model: {len(rows)} orders, {paid} paid, total {sum(r[2] for r in rows)}")
        assert len(rows) == 2 * orders
        assert paid == orders
        assert all(row[3] == (2 if row[1] == "paid" else 1) for row in rows)
    finally:
        service.close()
        await relay.close()
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(stream)
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer orders")
    args = parser.parse_args()
    asyncio.run(main(10 if args.quick else 200))
