"""Append, conflict, read back and rebuild an aggregate on PostgreSQL.

Run: ``python main.py`` (PostgreSQL at $PUPSOURCING_PG, by default
``host=127.0.0.1 port=5432 user=postgres dbname=test``). It works in a schema
of its own, dropped at the end, so it never touches your tables.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field

import psycopg

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore

DSN = os.environ.get("PUPSOURCING_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


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
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            with psycopg.connect(DSN, options=f"-c search_path={schema}") as conn:
                run(conn)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
