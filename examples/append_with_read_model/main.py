"""Append events and update your own table in one transaction.

Run: ``python main.py``. PostgreSQL at $PUPSOURCING_DB (by default
``postgresql://postgres@127.0.0.1:5432/test``), in a schema of its
own that is dropped at the end.

The store never commits: the events and your own writes commit or roll back
together. Here a ``users`` table, owned by the application, enforces unique
e-mail addresses and is always exactly what the events say: a duplicate
address rolls the events back, and a concurrency conflict rolls the table
back. No projection lag, no second system to keep in step.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import psycopg
from psycopg import errors

from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError
from pupsourcing.adapters.postgres import PostgresStore
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


store = PostgresStore()


def user_event(user_id: str, event_type: str, **data: object) -> Event:
    return Event("Identity", "User", user_id, event_type, json.dumps(data).encode())


def register(conn: psycopg.Connection[Any], user_id: str, email: str) -> int:
    """Returns the user's version after the command."""
    try:
        with conn.transaction():  # one transaction: both writes, or neither
            conn.execute(
                "INSERT INTO users (id, email, version) VALUES (%s, %s, 1)", (user_id, email)
            )
            result = store.append(
                conn,
                ExpectedVersion.no_stream(),
                [user_event(user_id, "UserRegistered", email=email)],
            )
    except errors.UniqueViolation:
        raise ValueError(f"{email} is taken") from None
    return result.to_version


def change_email(conn: psycopg.Connection[Any], user_id: str, email: str, version: int) -> int:
    """``version`` is the version the caller last saw (e.g. from a form)."""
    with conn.transaction():
        conn.execute(
            "UPDATE users SET email = %s, version = %s WHERE id = %s", (email, version + 1, user_id)
        )
        result = store.append(
            conn, ExpectedVersion.exact(version), [user_event(user_id, "EmailChanged", email=email)]
        )
    return result.to_version


def run(conn: psycopg.Connection[Any]) -> None:
    store.create_schema(conn)
    conn.execute(
        "CREATE TABLE users ("
        " id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, version BIGINT NOT NULL)"
    )

    ada = register(conn, "u-ada", "ada@example.org")
    register(conn, "u-grace", "grace@example.org")
    try:
        register(conn, "u-mallory", "ada@example.org")
    except ValueError as error:
        print("refused:", error)

    change_email(conn, "u-ada", "ada@lovelace.dev", version=ada)
    try:
        change_email(conn, "u-ada", "countess@example.org", version=ada)  # stale form
    except OptimisticConcurrencyError as conflict:
        seen = f"expected {conflict.expected}, actual {conflict.actual}"
        print(f"refused: u-ada changed meanwhile ({seen})")

    print("users:", conn.execute("SELECT id, email, version FROM users ORDER BY id").fetchall())
    # The table and the events agree, always: fold each stream and compare.
    for user_id, email, version in conn.execute("SELECT id, email, version FROM users").fetchall():
        stream = store.read_aggregate_stream(conn, "Identity", "User", user_id)
        assert json.loads(stream.events[-1].payload)["email"] == email
        assert stream.version == version
    assert store.read_aggregate_stream(conn, "Identity", "User", "u-mallory").is_empty
    print("the users table and the event streams agree")


def main() -> None:
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            # autocommit: each `with conn.transaction()` block is one real transaction
            with autocommit(in_schema(schema).connect()) as conn:
                run(conn)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
