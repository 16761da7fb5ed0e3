"""``pupsourcing demo``: the whole idea in one screen, on a local SQLite file.

Appends events for a few orders, provokes and catches an optimistic
concurrency conflict, reads a stream back and projects everything into a
small read model. Running it again continues: new orders are appended and
the projection resumes from its checkpoint. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError, PersistedEvent
from pupsourcing._text import plural
from pupsourcing.cli._db import table_names
from pupsourcing.cli.errors import CommandError
from pupsourcing.urls import parse_url

if TYPE_CHECKING:
    from pupsourcing.adapters.sqlite import SQLiteStore

DEFAULT_PATH = "pupsourcing-demo.db"
CONTEXT = "Sales"
READ_MODEL = "demo_orders"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="a one-screen tour on a local SQLite file",
        description="Append events, provoke a concurrency conflict, read a stream and "
        "project a read model, on a SQLite file in the current directory.",
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_PATH,
        metavar="PATH",
        help=f"SQLite file or sqlite:/// URL (default {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the demo's tables and start over"
    )
    parser.set_defaults(handler=lambda args: run(sqlite_path(args.db), fresh=args.fresh))


def sqlite_path(db: str) -> Path:
    """The demo's file from a path or a ``sqlite:///`` URL; the demo's read
    model is written in SQLite's dialect, so other databases are refused."""
    if "://" not in db:
        return Path(db)
    url = parse_url(db)
    if url.adapter != "sqlite" or url.path is None:
        raise CommandError(
            f"the demo runs on SQLite only, not on {url}; other commands take any database"
        )
    return Path(url.path)


def _event(order_id: str, event_type: str, **data: Any) -> Event:
    payload = json.dumps(data, separators=(",", ":")).encode()
    return Event(CONTEXT, "Order", order_id, event_type, payload)


class OrdersReadModel:
    """The read model: one row per order with status, item count and total.

    The processor calls ``handle`` inside the transaction that also moves the
    projection's checkpoint, so each event is applied exactly once.
    """

    name = READ_MODEL
    aggregate_types = ("Order",)

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        _apply(tx, event)


def _apply(tx: sqlite3.Connection, event: PersistedEvent) -> None:
    data = json.loads(event.payload)
    if event.event_type == "OrderPlaced":
        tx.execute(
            f"INSERT INTO {READ_MODEL} (order_id, customer, status, items, total_cents) "
            "VALUES (?, ?, 'open', 0, 0)",
            (event.aggregate_id, data["customer"]),
        )
    elif event.event_type == "ItemAdded":
        tx.execute(
            f"UPDATE {READ_MODEL} SET items = items + 1, total_cents = total_cents + ? "
            "WHERE order_id = ?",
            (data["price_cents"], event.aggregate_id),
        )
    elif event.event_type == "OrderCancelled":
        tx.execute(
            f"UPDATE {READ_MODEL} SET status = 'cancelled' WHERE order_id = ?",
            (event.aggregate_id,),
        )


def _check_demo_database(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a database with tables but not the demo's read model: the demo
    would append its orders to another application's store, and ``--fresh``
    would drop its tables."""
    tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    if tables and (READ_MODEL,) not in tables:
        raise CommandError(
            f"{path} holds tables and is not the demo's (it has no {READ_MODEL} table); "
            "the demo leaves it alone: pass --db with a new file"
        )


def _next_run(db: sqlite3.Connection, store: SQLiteStore) -> int:
    """One more than the highest run whose orders (``order-<run>-<x>``) are
    stored: a run stopped between its orders is not repeated."""
    ids = db.execute(
        f"SELECT DISTINCT aggregate_id FROM {store.config.events_table} "
        "WHERE bounded_context = ? AND aggregate_type = 'Order'",
        (CONTEXT,),
    ).fetchall()
    runs = [int(m[1]) for (i,) in ids if (m := re.fullmatch(r"order-(\d+)-[abc]", i))]
    return max(runs, default=0) + 1


def _drop_demo_tables(db: sqlite3.Connection, store: SQLiteStore) -> None:
    config = store.config
    for table in (READ_MODEL, *table_names(config)):
        db.execute(f'DROP TABLE IF EXISTS "{table}"')
    db.commit()


def run(path: Path, *, fresh: bool = False, out: TextIO | None = None) -> int:
    def say(line: str = "") -> None:
        print(line, file=out)

    # Imported here, not at the top: every ``pupsourcing`` command imports
    # this module to register ``demo``, and only ``demo`` needs these.
    from pupsourcing.adapters.sqlite import SQLiteStore, connect
    from pupsourcing.projection import Processor

    store = SQLiteStore()
    db = connect(path)
    rival = connect(path)
    try:
        _check_demo_database(db, path)
        if fresh:
            _drop_demo_tables(db, store)
        # The read model first: it marks the file as the demo's.
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {READ_MODEL} (order_id TEXT PRIMARY KEY, "
            "customer TEXT NOT NULL, status TEXT NOT NULL, items INTEGER NOT NULL, "
            "total_cents INTEGER NOT NULL)"
        )
        db.commit()
        store.create_schema(db)
        db.commit()
        run_no = _next_run(db, store)
        say(f"pupsourcing demo, run {run_no}: event store in {path} (SQLite)")
        if run_no > 1:
            say("  (continuing the previous runs; `pupsourcing demo --fresh` starts over)")

        say()
        say("1. Append events: one append = one aggregate, inside your transaction")
        orders = {
            f"order-{run_no}-a": [
                _event(f"order-{run_no}-a", "OrderPlaced", customer="ada"),
                _event(f"order-{run_no}-a", "ItemAdded", sku="book", price_cents=1250),
                _event(f"order-{run_no}-a", "ItemAdded", sku="lamp", price_cents=3900),
            ],
            f"order-{run_no}-b": [
                _event(f"order-{run_no}-b", "OrderPlaced", customer="grace"),
                _event(f"order-{run_no}-b", "ItemAdded", sku="pen", price_cents=300),
            ],
            f"order-{run_no}-c": [
                _event(f"order-{run_no}-c", "OrderPlaced", customer="linus"),
                _event(f"order-{run_no}-c", "OrderCancelled", reason="changed mind"),
            ],
        }
        for order_id, events in orders.items():
            result = store.append(db, ExpectedVersion.no_stream(), events)
            db.commit()
            types = ", ".join(e.event_type for e in events)
            positions = result.global_positions
            say(
                f"   {order_id}: {types:<36} -> versions {result.from_version + 1}.."
                f"{result.to_version}, positions {positions[0]}..{positions[-1]}"
            )

        say()
        target = f"order-{run_no}-a"
        say(f"2. Optimistic concurrency: two clients both read {target} at version 3")
        seen = store.read_aggregate_stream(rival, CONTEXT, "Order", target).version
        store.append(
            db,
            ExpectedVersion.exact(3),
            [_event(target, "ItemAdded", sku="mug", price_cents=800)],
        )
        db.commit()
        say("   client A appends ItemAdded with ExpectedVersion.exact(3): ok, now version 4")
        try:
            store.append(
                rival,
                ExpectedVersion.exact(seen),
                [_event(target, "OrderCancelled", reason="too slow")],
            )
            rival.commit()
            say("   client B was not stopped: this should not happen")
            return 1
        except OptimisticConcurrencyError as conflict:
            rival.rollback()
            say(f"   client B appends with ExpectedVersion.exact({seen}): rejected")
            say(
                "     OptimisticConcurrencyError: "
                f"expected {conflict.expected}, actual {conflict.actual}"
            )

        say()
        say(f"3. Read the stream of {target} back")
        for event in store.read_aggregate_stream(db, CONTEXT, "Order", target):
            say(
                f"   v{event.aggregate_version} @{event.global_position:<3} "
                f"{event.event_type:<14} {event.payload.decode()}"
            )

        say()
        say(f"4. Project every event into the read model table {READ_MODEL!r}")
        projection = OrdersReadModel()
        with Processor(db, store) as processor:
            handled = processor.catch_up(projection)
        checkpoint = store.get_checkpoint(db, projection.name)
        name = projection.name
        say(
            f"   handled {plural(handled, 'new event')}; checkpoint of {name!r} is now {checkpoint}"
        )
        say(f"   {'order':<12} {'customer':<9} {'status':<10} {'items':>5} {'total':>9}")
        for order_id, customer, status, items, cents in db.execute(
            f"SELECT order_id, customer, status, items, total_cents FROM {READ_MODEL} "
            "ORDER BY rowid DESC LIMIT 3"
        ).fetchall()[::-1]:
            say(f"   {order_id:<12} {customer:<9} {status:<10} {items:>5} {cents / 100:>9.2f}")
        total = db.execute(f"SELECT count(*) FROM {READ_MODEL}").fetchone()[0]
        if total > 3:
            say(f"   ... and {plural(total - 3, 'order')} from earlier runs")
        say()
        say("Run it again: new orders are appended and the projection resumes at its checkpoint.")
        return 0
    finally:
        rival.close()
        db.close()
