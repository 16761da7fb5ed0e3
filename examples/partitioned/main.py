"""One projection, N partitions, N separate processes that share only the database.

Run: ``python main.py --partitions 4`` and stop it with Ctrl+C; ``--quick``
stops once everything is projected. PostgreSQL at $PUPSOURCING_DB (by default
``postgresql://postgres@127.0.0.1:5432/test``), in a schema of its
own that is dropped at the end.

The script starts N worker processes of itself, ``main.py --worker K``: the
command line you would run on N machines (with the partition key from an
environment variable, a StatefulSet ordinal, ...). A worker knows nothing
about the others; hash partitioning alone makes sure every aggregate is
handled by exactly one of them, in order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

import psycopg

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.projection import Processor, ProcessorConfig
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


class AccountBalances:
    name = "account_balances"
    aggregate_types = ("Account",)

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.handled = 0

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        cents = json.loads(event.payload)["cents"]
        tx.execute(
            "INSERT INTO balances VALUES (%s, %s, %s) ON CONFLICT (account_id) "
            "DO UPDATE SET cents = balances.cents + EXCLUDED.cents",
            (event.aggregate_id, cents, self.partition),
        )
        self.handled += 1


def worker(schema: str, key: int, total: int, quick: bool) -> None:
    """What each machine runs: one partition of the projection."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    projection = AccountBalances(key)
    config = ProcessorConfig(partition_key=key, total_partitions=total)
    connect = in_schema(schema).connect
    with Processor(connect, PostgresStore(), config) as processor:
        if quick:
            processor.catch_up(projection)
        else:
            processor.run(projection, stop=stop)
    print(f"worker {key}/{total}: handled {projection.handled} events")


def deposit(store: PostgresStore, conn: psycopg.Connection[Any], accounts: int) -> None:
    for n in range(accounts):
        event = Event(
            "Bank", "Account", f"acc-{n}", "Deposited", json.dumps({"cents": 100}).encode()
        )
        store.append(conn, ExpectedVersion.any(), [event])
    conn.commit()


def coordinator(total: int, quick: bool) -> None:
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            conn = in_schema(schema).connect()
            store = PostgresStore()
            store.create_schema(conn)
            conn.execute(
                "CREATE TABLE balances (account_id TEXT PRIMARY KEY, cents BIGINT, partition INT)"
            )
            conn.commit()
            deposit(store, conn, 24)

            command = [sys.executable, __file__, "--schema", schema, "--partitions", str(total)]
            workers = [
                subprocess.Popen([*command, "--worker", str(key), *(["--quick"] if quick else [])])
                for key in range(total)
            ]
            if not quick:
                stop = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                print(f"{total} worker processes running; press Ctrl+C to stop")
                while not stop.wait(1.0):
                    deposit(store, conn, 24)
                for process in workers:
                    process.terminate()
            for process in workers:
                process.wait()
            failed = [process.args for process in workers if process.returncode != 0]
            assert not failed, failed

            rows = conn.execute(
                "SELECT partition, count(*), sum(cents) FROM balances GROUP BY 1 ORDER BY 1"
            ).fetchall()
            for partition, accounts, cents in rows:
                print(f"partition {partition}: {accounts} accounts, {cents} cents")
            if quick:
                assert sum(row[1] for row in rows) == 24
                assert sum(row[2] for row in rows) == 2400
            conn.close()
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="stop once everything is projected")
    parser.add_argument("--worker", type=int, metavar="K", help="run partition K (worker mode)")
    parser.add_argument("--schema", help="the schema to work in (worker mode)")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.schema, args.worker, args.partitions, args.quick)
    else:
        coordinator(args.partitions, args.quick)


if __name__ == "__main__":
    main()
