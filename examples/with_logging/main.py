"""What projection processors log, and how to route it into structured logs.

Run: ``python main.py`` (uses ``with_logging.db`` (or ``$PUPSOURCING_DB``) in the current directory,
fresh on every run). Processors log on the ``pupsourcing`` logger (or the one
in ``ProcessorConfig.logger``); each batch that handled events is one INFO
record whose ``projection``, ``handled``, ``checkpoint`` and ``fetched``
attributes a formatter can pick up. Here they become JSON lines on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from pupsourcing import Event, ExpectedVersion, PersistedEvent, ProjectionError
from pupsourcing.adapters.sqlite import SQLiteStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.urls import database

# PUPSOURCING_DB names the database (examples/README.md, "Settings"): SQLite here.
DB = database(os.environ.get("PUPSOURCING_DB", "sqlite:///with_logging.db"))
if DB.url.adapter != "sqlite":
    sys.exit(f"this example runs on SQLite, but PUPSOURCING_DB names {DB.url}")
FILE = Path(DB.url.path or "")


class JsonLines(logging.Formatter):
    BATCH_FIELDS = ("projection", "handled", "checkpoint", "fetched")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({f: getattr(record, f) for f in self.BATCH_FIELDS if hasattr(record, f)})
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = repr(record.exc_info[1])
        return json.dumps(line)


class Invoices:
    name = "invoices"

    def __init__(self) -> None:
        self.broken = False

    def handle(self, event: PersistedEvent, tx: sqlite3.Connection) -> None:
        if self.broken and event.global_position == 7:
            raise ConnectionError("the PDF renderer is down")


class InvoiceSearch(Invoices):
    name = "invoice_search"  # partitioned, so a projection of its own


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.getLogger("pupsourcing").addHandler(handler)
    logging.getLogger("pupsourcing").setLevel(logging.DEBUG)

    for stale in (FILE, Path(f"{FILE}-wal"), Path(f"{FILE}-shm")):
        stale.unlink(missing_ok=True)
    store = SQLiteStore()
    db = DB.connect()
    store.create_schema(db)
    for n in range(5):
        store.append(
            db,
            ExpectedVersion.no_stream(),
            [Event("Billing", "Invoice", f"inv-{n}", "InvoiceIssued", b"{}")],
        )
    db.commit()

    print("-- one INFO record per batch that handled events (batch_size=3):")
    with Processor(DB.connect, store, ProcessorConfig(batch_size=3)) as processor:
        processor.catch_up(Invoices())

    print("-- a handler error: ERROR with the exception, then ProjectionError is raised:")
    for n in range(5, 8):
        store.append(
            db,
            ExpectedVersion.no_stream(),
            [Event("Billing", "Invoice", f"inv-{n}", "InvoiceIssued", b"{}")],
        )
    db.commit()
    invoices = Invoices()
    invoices.broken = True
    try:
        with Processor(DB.connect, store) as processor:
            processor.catch_up(invoices)
    except ProjectionError as error:
        print(f"   (raised {type(error).__name__}: {error})")

    print("-- one child logger per partition tells the processors apart:")
    for key in range(2):
        config = ProcessorConfig(
            partition_key=key,
            total_partitions=2,
            logger=logging.getLogger(f"pupsourcing.invoice_search.p{key}"),
        )
        with Processor(DB.connect, store, config) as processor:
            processor.catch_up(InvoiceSearch())
    db.close()


if __name__ == "__main__":
    main()
