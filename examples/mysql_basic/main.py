"""Event sourcing on MySQL / MariaDB, and the limits of the Go library's schema.

Run: ``python main.py`` (MariaDB or MySQL at $PUPSOURCING_DB, by default
``mysql://root@127.0.0.1:3306/test``; ``mysql+mysqldb://`` picks mysqlclient).
It works in a database of its own on that server, dropped at the end.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pupsourcing import Event, ExpectedVersion, InvalidEventError, OptimisticConcurrencyError
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.urls import Database, database

# PUPSOURCING_DB names the server (examples/README.md, "Settings"): MySQL here.
URL = os.environ.get("PUPSOURCING_DB", "mysql://root@127.0.0.1:3306/test")


def server(name: str | None = None) -> Database:
    """The server ``URL`` names; database ``name`` on it if given."""
    url = URL if name is None else urlunsplit(urlsplit(URL)._replace(path=f"/{name}"))
    db = database(url)
    if db.url.adapter != "mysql":
        sys.exit(f"this example runs on MySQL or MariaDB, but PUPSOURCING_DB names {db.url}")
    return db


def account_event(account_id: str, event_type: str, **data: object) -> Event:
    return Event("Banking", "Account", account_id, event_type, json.dumps(data).encode())


def run(connect: Any) -> None:
    store = MySQLStore()
    conn = connect()
    store.create_schema(conn)
    conn.commit()

    store.append(conn, ExpectedVersion.no_stream(), [account_event("acc-1", "AccountOpened")])
    store.append(conn, ExpectedVersion.exact(1), [account_event("acc-1", "Deposited", cents=500)])
    conn.commit()

    # Inside a transaction a failed append rolls back to a savepoint: the
    # caller's earlier writes in the same transaction survive.
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE audit (note VARCHAR(100))")
    cursor.execute("INSERT INTO audit VALUES ('withdrawal requested')")
    try:
        store.append(
            conn, ExpectedVersion.exact(1), [account_event("acc-1", "Withdrawn", cents=100)]
        )
    except OptimisticConcurrencyError as conflict:
        print(f"stale version refused: expected {conflict.expected}, actual {conflict.actual}")
    conn.commit()
    cursor.execute("SELECT count(*) FROM audit")
    print("audit rows kept:", cursor.fetchone()[0])

    # On an autocommit connection the append commits by itself.
    auto = connect()
    auto.autocommit(True)  # PyMySQL and mysqlclient: a method
    store.append(auto, ExpectedVersion.exact(2), [account_event("acc-1", "Withdrawn", cents=100)])
    auto.close()

    # The Go schema's payload column is a BLOB: at most 65,535 bytes. Checked
    # before anything is sent, never truncated; widening the column lifts it.
    statement = account_event("acc-1", "StatementAttached", pdf="x" * 70_000)
    try:
        store.append(conn, ExpectedVersion.any(), [statement])
    except InvalidEventError as error:
        print(f"refused: {error.field} too large for a BLOB")
    cursor.execute("ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    store.append(conn, ExpectedVersion.any(), [statement])
    conn.commit()

    stream = store.read_aggregate_stream(conn, "Banking", "Account", "acc-1")
    print("acc-1:", [(e.aggregate_version, e.event_type) for e in stream])
    assert [e.event_type for e in stream][-1] == "StatementAttached"
    conn.close()


def main() -> None:
    name = f"example_{uuid.uuid4().hex[:8]}"
    admin = server().connect()
    admin.autocommit(True)
    admin.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        run(server(name).connect)
    finally:
        admin.cursor().execute(f"DROP DATABASE {name}")
        admin.close()


if __name__ == "__main__":
    main()
