"""One projection split into N partitions, run as N threads of one process.

Run: ``python main.py --workers 4`` and stop it with Ctrl+C; ``--quick`` stops
once everything is projected. PostgreSQL at $PUPSOURCING_DB (by default
``postgresql://postgres@127.0.0.1:5432/test``), in a schema of its
own that is dropped at the end.

Each partition has its own ``Processor`` (and connection) and its own
checkpoint, ``user_emails_p0`` ... ``user_emails_p3``. All events of one user
land in the same partition, so they are handled in order. The projection
object is shared by the threads, so its in-memory counter takes a lock; its
database writes go through each thread's own ``tx``.
"""

from __future__ import annotations

import argparse
import collections
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


class UserEmails:
    name = "user_emails"
    aggregate_types = ("User",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.per_thread: collections.Counter[int] = collections.Counter()

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        email = json.loads(event.payload)["email"]
        tx.execute(
            "INSERT INTO user_emails VALUES (%s, %s, %s) ON CONFLICT (user_id) "
            "DO UPDATE SET email = EXCLUDED.email, version = EXCLUDED.version "
            "WHERE user_emails.version = EXCLUDED.version - 1",  # in order, or not at all
            (event.aggregate_id, email, event.aggregate_version),
        )
        with self.lock:
            self.per_thread[threading.get_ident()] += 1


def append_users(store: PostgresStore, conn: psycopg.Connection[Any], count: int) -> None:
    for n in range(count):
        user_id = str(uuid.uuid4())
        events = [
            Event(
                "Identity",
                "User",
                user_id,
                "UserRegistered",
                json.dumps({"email": f"u{n}@old.example"}).encode(),
            ),
            Event(
                "Identity",
                "User",
                user_id,
                "EmailChanged",
                json.dumps({"email": f"u{n}@new.example"}).encode(),
            ),
        ]
        store.append(conn, ExpectedVersion.no_stream(), events)
        conn.commit()


def run(connect: Any, workers: int, quick: bool) -> None:
    store = PostgresStore()
    conn = connect()
    store.create_schema(conn)
    conn.execute("CREATE TABLE user_emails (user_id TEXT PRIMARY KEY, email TEXT, version BIGINT)")
    conn.commit()
    append_users(store, conn, 40)

    projection = UserEmails()
    pairs = [
        ProjectionRunner(
            projection,
            Processor(connect, store, ProcessorConfig(partition_key=key, total_partitions=workers)),
        )
        for key in range(workers)
    ]
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch() -> None:
        names = [f"{UserEmails.name}_p{key}" for key in range(workers)]
        while not stop.is_set():
            if quick:
                last = conn.execute("SELECT max(global_position) FROM events").fetchone()[0]
                if all(store.get_checkpoint(conn, name) == last for name in names):
                    stop.set()
                conn.commit()
                time.sleep(0.05)
            else:
                append_users(store, conn, 4)
                stop.wait(1.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    print(f"{workers} partitions in {workers} threads; press Ctrl+C to stop")
    try:
        Runner().run(pairs, stop=stop)
    finally:
        stop.set()
        watcher.join()
        for pair in pairs:
            pair.processor.close()

    for n, handled in enumerate(projection.per_thread.values(), 1):
        print(f"  thread {n}: {handled} events")
    stale = conn.execute(
        "SELECT count(*) FROM user_emails WHERE email LIKE '%%@old.example'"
    ).fetchone()[0]
    users = conn.execute("SELECT count(*) FROM user_emails").fetchone()[0]
    print(f"{users} users projected, {stale} with an outdated e-mail")
    if quick:
        assert users == 40
        assert stale == 0
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4, help="partitions (threads)")
    parser.add_argument("--quick", action="store_true", help="stop once everything is projected")
    args = parser.parse_args()
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            connect = in_schema(schema).connect
            run(connect, args.workers, args.quick)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
