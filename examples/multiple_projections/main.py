"""Several projections in one process, each with its own checkpoint and batch size.

Run: ``python main.py`` and stop it with Ctrl+C; ``--quick`` stops once
everything is projected. PostgreSQL at $PUPSOURCING_DB (by default
``postgresql://postgres@127.0.0.1:5432/test``), in a schema of its
own that is dropped at the end.

The ``Runner`` runs each (projection, processor) pair in a thread. The first
projection to fail stops the others, and the error is raised.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.runner import ProjectionRunner, Runner
from pupsourcing.urls import Database, database

# PUPSOURCING_DB names the server (examples/README.md, "Settings"): PostgreSQL here.
URL = os.environ.get("PUPSOURCING_DB", "postgresql://postgres@127.0.0.1:5432/test")


def server() -> Database:
    """The database ``URL`` names; the example works in a schema of its own there."""
    db = database(URL)
    if db.url.adapter != "postgres":
        sys.exit(f"this example runs on PostgreSQL, but PUPSOURCING_DB names {db.url}")
    return db


def in_schema(schema: str) -> Database:
    """The same database with ``schema`` as the search path (a libpq option)."""
    return database(f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{schema}")


def autocommit(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.autocommit = True
    return conn


class OrderTotals:
    """Read model: the total of every order."""

    name = "order_totals"
    aggregate_types = ("Order",)

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        data = json.loads(event.payload)
        if event.event_type == "OrderPlaced":
            tx.execute(
                "INSERT INTO order_totals VALUES (%s, %s, 0)",
                (event.aggregate_id, data["customer"]),
            )
        elif event.event_type == "ItemAdded":
            tx.execute(
                "UPDATE order_totals SET cents = cents + %s WHERE order_id = %s",
                (data["cents"], event.aggregate_id),
            )


class CustomerStats:
    """Read model: orders per customer. Different table, own checkpoint."""

    name = "customer_stats"
    aggregate_types = ("Order",)

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        if event.event_type == "OrderPlaced":
            tx.execute(
                "INSERT INTO customer_stats VALUES (%s, 1) "
                "ON CONFLICT (customer) DO UPDATE SET orders = customer_stats.orders + 1",
                (json.loads(event.payload)["customer"],),
            )


class ActivityFeed:
    """Every event, newest first: a different batch size suits a different load."""

    name = "activity_feed"

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        tx.execute(
            "INSERT INTO activity VALUES (%s, %s, %s)",
            (event.global_position, event.aggregate_id, event.event_type),
        )


def append_orders(store: PostgresStore, conn: psycopg.Connection[Any], count: int) -> None:
    for n in range(count):
        order_id = str(uuid.uuid4())
        events = [
            Event(
                "Sales",
                "Order",
                order_id,
                "OrderPlaced",
                json.dumps({"customer": f"c{n % 3}"}).encode(),
            ),
            Event(
                "Sales",
                "Order",
                order_id,
                "ItemAdded",
                json.dumps({"cents": 100 * (n + 1)}).encode(),
            ),
        ]
        store.append(conn, ExpectedVersion.no_stream(), events)
        conn.commit()


def run(connect: Any, quick: bool) -> None:
    store = PostgresStore()
    conn = connect()
    store.create_schema(conn)
    conn.execute(
        "CREATE TABLE order_totals (order_id TEXT PRIMARY KEY, customer TEXT, cents BIGINT)"
    )
    conn.execute("CREATE TABLE customer_stats (customer TEXT PRIMARY KEY, orders INT)")
    conn.execute(
        "CREATE TABLE activity (position BIGINT PRIMARY KEY, aggregate_id TEXT, event_type TEXT)"
    )
    conn.commit()
    append_orders(store, conn, 10)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pairs = [
        ProjectionRunner(OrderTotals(), Processor(connect, store, ProcessorConfig(batch_size=100))),
        ProjectionRunner(
            CustomerStats(), Processor(connect, store, ProcessorConfig(batch_size=10))
        ),
        ProjectionRunner(
            ActivityFeed(), Processor(connect, store, ProcessorConfig(batch_size=500))
        ),
    ]

    def watch() -> None:
        """Stop when every projection has caught up (--quick); else keep appending."""
        while not stop.is_set():
            if quick:
                last = conn.execute("SELECT max(global_position) FROM events").fetchone()[0]
                done = [store.get_checkpoint(conn, p.projection.name) == last for p in pairs]
                conn.commit()
                if all(done):
                    stop.set()
                time.sleep(0.05)
            else:
                append_orders(store, conn, 1)
                stop.wait(1.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    print("three projections running; press Ctrl+C to stop")
    try:
        Runner().run(pairs, stop=stop)
    finally:
        stop.set()
        watcher.join()
        for pair in pairs:
            pair.processor.close()

    for pair in pairs:
        name = pair.projection.name
        print(f"{name:<15} checkpoint {store.get_checkpoint(conn, name)}")
    print(
        "customer_stats:", conn.execute("SELECT * FROM customer_stats ORDER BY customer").fetchall()
    )
    orders = conn.execute("SELECT count(*) FROM order_totals").fetchone()[0]
    activity = conn.execute("SELECT count(*) FROM activity").fetchone()[0]
    print(f"order_totals: {orders} orders, activity: {activity} events")
    if quick:  # all caught up: every order has two events
        assert activity == 2 * orders
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="stop once everything is projected")
    args = parser.parse_args()
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            run(in_schema(schema).connect, args.quick)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
