"""Event sourcing on MySQL / MariaDB, and the limits of the Go library's schema.

Run: ``python main.py`` (MariaDB or MySQL at $PUPSOURCING_MYSQL_HOST, by
default 127.0.0.1:3306, user root without password). It works in a database
of its own, dropped at the end.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pymysql

from pupsourcing import Event, ExpectedVersion, InvalidEventError, OptimisticConcurrencyError
from pupsourcing.adapters.mysql import MySQLStore

SERVER: dict[str, Any] = {
    "host": os.environ.get("PUPSOURCING_MYSQL_HOST", "127.0.0.1"),
    "port": 3306,
    "user": "root",
    "password": "",
}


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
    auto = connect(autocommit=True)
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
    database = f"example_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(**SERVER, autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        run(lambda **kw: pymysql.connect(**SERVER, database=database, charset="utf8mb4", **kw))
    finally:
        admin.cursor().execute(f"DROP DATABASE {database}")
        admin.close()


if __name__ == "__main__":
    main()
