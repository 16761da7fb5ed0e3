"""Stop a projection, kill one mid-batch, resume: every event is applied exactly once.

Run: ``python main.py`` (``--quick`` for fewer events). Uses
``stop_resume.db`` (or ``$PUPSOURCING_DB``) in the current directory, fresh on every run.

1. A worker process projects events slowly and is stopped gracefully
   (SIGTERM): it finishes its batch, and the checkpoint says how far it got.
2. A second worker resumes from that checkpoint and is killed with SIGKILL in
   the middle of a batch: the database rolls the batch back.
3. A third run catches up. The read model has one row per event, no more, no
   less: its primary key would have refused a second application.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///stop_resume.db"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")
FILE = Path(DB.url.path or "")
NAME = "ledger"


class Ledger:
    name = NAME

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        tx.execute(
            "INSERT INTO ledger (position, aggregate_id) VALUES (?, ?)",
            (event.global_position, event.aggregate_id),
        )
        time.sleep(0.005)  # slow enough to be caught in the middle of a batch


def status(store: SQLiteStore, db: sqlite3.Connection, label: str) -> None:
    checkpoint = store.get_checkpoint(db, NAME)
    rows = db.execute("SELECT count(*) FROM ledger").fetchone()[0]
    total = db.execute("SELECT max(global_position) FROM events").fetchone()[0]
    print(f"{label:<28} checkpoint {checkpoint:>4} of {total}, ledger rows {rows:>4}")
    assert rows == checkpoint  # the read model and the checkpoint move together


def wait_for_progress(store: SQLiteStore, db: sqlite3.Connection, beyond: int) -> None:
    """Let the worker get going: its checkpoint moved, and it is in another batch."""
    deadline = time.monotonic() + 30
    while store.get_checkpoint(db, NAME) <= beyond and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def worker() -> None:
    """A projection process: runs until SIGTERM, like a service would."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Processor(DB.connect, SQLiteStore(), ProcessorConfig(batch_size=20)) as processor:
        processor.run(Ledger(), stop=stop)


def start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--worker"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return

    for stale in (FILE, Path(f"{FILE}-wal"), Path(f"{FILE}-shm")):
        stale.unlink(missing_ok=True)
    store = SQLiteStore()
    db = DB.connect()
    store.create_schema(db)
    db.execute("CREATE TABLE ledger (position INTEGER PRIMARY KEY, aggregate_id TEXT)")
    count = 300 if args.quick else 2000
    for n in range(count):
        store.append(
            db, ExpectedVersion.any(), [Event("Bank", "Account", f"acc-{n % 7}", "Booked", b"{}")]
        )
    db.commit()
    status(store, db, "appended, nothing projected")

    first = start_worker()
    wait_for_progress(store, db, beyond=0)
    first.terminate()  # SIGTERM: the worker finishes its batch and stops
    first.wait()
    status(store, db, "stopped gracefully")

    second = start_worker()
    wait_for_progress(store, db, beyond=store.get_checkpoint(db, NAME))
    second.kill()  # SIGKILL: no goodbye; the open batch is rolled back
    second.wait()
    status(store, db, "killed mid-batch")

    with Processor(DB.connect, store) as processor:
        processor.catch_up(Ledger())
    status(store, db, "resumed and caught up")
    distinct = db.execute("SELECT count(DISTINCT position) FROM ledger").fetchone()[0]
    assert distinct == count, (distinct, count)
    print(f"every one of the {count} events is in the ledger exactly once")
    db.close()


if __name__ == "__main__":
    main()
