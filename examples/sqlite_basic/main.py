"""Event sourcing on a SQLite file: no server, nothing to install.

Run: ``python main.py`` (writes ``sqlite_basic.db``, or the SQLite file
``$PUPSOURCING_DB`` names, and ``migrations/`` in the current directory,
fresh on every run).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.migrations import write_migration
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///sqlite_basic.db"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")
FILE = Path(DB.url.path or "")


def note_event(note_id: str, event_type: str, **data: object) -> Event:
    return Event("Notes", "Note", note_id, event_type, json.dumps(data).encode())


def main() -> None:
    for stale in (FILE, Path(f"{FILE}-wal"), Path(f"{FILE}-shm")):
        stale.unlink(missing_ok=True)

    # The schema as a migration file, as `pupsourcing migrate-gen --adapter sqlite`
    # writes it; here we apply it ourselves (store.create_schema() would do too).
    migration = write_migration(
        "sqlite", "migrations", filename="0001_event_store.sql", overwrite=True
    )
    db = DB.connect()  # WAL mode, 5 s busy timeout
    db.executescript(migration.read_text())
    print(f"applied {migration}")

    store = SQLiteStore()
    store.append(db, ExpectedVersion.no_stream(), [note_event("n-1", "NoteWritten", text="hello")])
    store.append(db, ExpectedVersion.exact(1), [note_event("n-1", "NoteEdited", text="hello!")])
    store.append(db, ExpectedVersion.no_stream(), [note_event("n-2", "NoteWritten", text="bye")])
    db.commit()

    # A second connection is another writer; SQLite serialises them.
    other = DB.connect()
    try:
        store.append(other, ExpectedVersion.no_stream(), [note_event("n-1", "NoteWritten")])
    except OptimisticConcurrencyError as conflict:
        other.rollback()
        print(f"n-1 exists already: expected {conflict.expected}, actual {conflict.actual}")
    other.close()

    stream = store.read_aggregate_stream(db, "Notes", "Note", "n-1")
    text = json.loads(stream.events[-1].payload)["text"]
    print(f"n-1 is at version {stream.version}, text {text!r}")
    for event in store.read_events(db, from_position=0, limit=10):
        print(
            f"  #{event.global_position} {event.aggregate_id} v{event.aggregate_version} "
            f"{event.event_type} at {event.created_at:%Y-%m-%d %H:%M:%S}"
        )
    stored = db.execute("SELECT created_at FROM events ORDER BY global_position").fetchone()[0]
    print(f"created_at is stored as UTC text: {stored!r}")
    db.close()


if __name__ == "__main__":
    main()
