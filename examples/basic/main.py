"""Append, conflict, read back and rebuild an aggregate on PostgreSQL.

Run: ``python main.py`` (PostgreSQL at $PUPSOURCING_DB, by default
``postgresql://postgres@127.0.0.1:5432/test``). It works in a schema
of its own, dropped at the end, so it never touches your tables.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
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


def order_event(order_id: str, event_type: str, **data: object) -> Event:
    return Event("Sales", "Order", order_id, event_type, json.dumps(data).encode())


@dataclass
class Order:
    """An aggregate's state is a fold over its events."""

    customer: str = ""
    items: list[str] = field(default_factory=list)
    total_cents: int = 0
    version: int = 0

    def apply(self, event: PersistedEvent) -> None:
        data = json.loads(event.payload)
        if event.event_type == "OrderPlaced":
            self.customer = data["customer"]
        elif event.event_type == "ItemAdded":
            self.items.append(data["sku"])
            self.total_cents += data["price_cents"]
        self.version = event.aggregate_version


def load(store: PostgresStore, conn: psycopg.Connection, order_id: str) -> Order:
    order = Order()
    for event in store.read_aggregate_stream(conn, "Sales", "Order", order_id):
        order.apply(event)
    return order


def run(conn: psycopg.Connection) -> None:
    store = PostgresStore()
    store.create_schema(conn)
    conn.commit()

    order_id = str(uuid.uuid4())
    result = store.append(
        conn,
        ExpectedVersion.no_stream(),
        [
            order_event(order_id, "OrderPlaced", customer="ada"),
            order_event(order_id, "ItemAdded", sku="book", price_cents=1250),
        ],
    )
    conn.commit()
    print(
        f"placed order {order_id[:8]}: versions 1..{result.to_version}, "
        f"positions {list(result.global_positions)}"
    )

    # Two requests load the order at the same version; only the first may append.
    first, second = load(store, conn, order_id), load(store, conn, order_id)
    store.append(
        conn,
        ExpectedVersion.exact(first.version),
        [order_event(order_id, "ItemAdded", sku="pen", price_cents=250)],
    )
    conn.commit()
    try:
        store.append(
            conn,
            ExpectedVersion.exact(second.version),
            [order_event(order_id, "ItemAdded", sku="ink", price_cents=900)],
        )
        conn.commit()
    except OptimisticConcurrencyError as conflict:
        conn.rollback()
        print(f"second writer refused: expected {conflict.expected}, actual {conflict.actual}")

    order = load(store, conn, order_id)
    print(
        f"rebuilt: {order.customer} ordered {order.items} for {order.total_cents} cents, "
        f"version {order.version}"
    )
    assert (order.items, order.version) == (["book", "pen"], 3)

    events = store.read_events(conn, from_position=0, limit=100)
    print("the log:", [(e.global_position, e.event_type) for e in events])


def main() -> None:
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            with in_schema(schema).connect() as conn:
                run(conn)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
