"""One projection, one processor: a read model kept up to date while events arrive.

Run: ``python main.py`` and stop it with Ctrl+C (or SIGTERM); ``--quick``
stops by itself once the first events are projected. Uses
``single_worker.db`` (or ``$PUPSOURCING_DB``) in the current directory, fresh on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///single_worker.db"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")
FILE = Path(DB.url.path or "")


class UserDirectory:
    """Read model: one row per user. Written through ``tx``, the processor's
    connection, so each event is applied exactly once with the checkpoint."""

    name = "user_directory"
    aggregate_types = ("User",)

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        if event.event_type == "UserRegistered":
            email = json.loads(event.payload)["email"]
            tx.execute("INSERT INTO users (id, email) VALUES (?, ?)", (event.aggregate_id, email))
        print(f"  projected #{event.global_position} {event.event_type} {event.aggregate_id}")


def register(store: SQLiteStore, db: sqlite3.Connection, n: int) -> None:
    payload = json.dumps({"email": f"user{n}@example.org"}).encode()
    store.append(
        db,
        ExpectedVersion.no_stream(),
        [Event("Identity", "User", f"user-{n}", "UserRegistered", payload)],
    )
    db.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="stop once 5 users are projected")
    args = parser.parse_args()

    for stale in (FILE, Path(f"{FILE}-wal"), Path(f"{FILE}-shm")):
        stale.unlink(missing_ok=True)
    store = SQLiteStore()
    db = DB.connect()
    store.create_schema(db)
    db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL)")
    db.commit()

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def application() -> None:
        """Stands in for the rest of the system: registers a user now and then."""
        app_db = DB.connect()
        n = 0
        while not stop.is_set():
            n += 1
            register(store, app_db, n)
            if args.quick and n == 5:
                break
            stop.wait(0.2 if args.quick else 1.0)
        if args.quick:  # wait for the projection, then stop it
            while (
                not stop.is_set() and app_db.execute("SELECT count(*) FROM users").fetchone()[0] < 5
            ):
                time.sleep(0.05)
            stop.set()
        app_db.close()

    writer = threading.Thread(target=application)
    writer.start()
    print("projecting; press Ctrl+C to stop")
    processor = Processor(DB.connect, store, ProcessorConfig(poll_interval=0.1))
    with processor:
        processor.run(UserDirectory(), stop=stop)  # returns when stop is set
    writer.join()

    users = db.execute("SELECT count(*) FROM users").fetchone()[0]
    checkpoint = store.get_checkpoint(db, UserDirectory.name)
    print(f"stopped: {users} users in the read model, checkpoint {checkpoint}")
    db.close()


if __name__ == "__main__":
    main()
