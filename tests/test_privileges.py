"""The privileges the adapter pages document are enough, and what is missing is said.

Each test creates a database user with a random name, grants it exactly what
the documentation lists, and drops it afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import MYSQL_HOST, PG_DSN, mysql_admin, require, unavailable
from helpers import Count, event
from pupsourcing import ExpectedVersion
from pupsourcing.projection import Processor


@pytest.fixture
def pg_admin() -> Iterator[Any]:
    psycopg = require("psycopg")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    yield admin
    admin.close()


def test_postgres_role_with_the_documented_privileges(pg_admin: Any) -> None:
    import psycopg

    from pupsourcing.adapters.postgres import PostgresStore

    tag = uuid.uuid4().hex[:12]
    schema, role = f"t_{tag}", f"r_{tag}"
    pg_admin.execute(f"CREATE SCHEMA {schema}")
    pg_admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        store = PostgresStore()
        owner = psycopg.connect(PG_DSN, options=f"-c search_path={schema}")
        store.create_schema(owner)
        owner.commit()
        owner.close()
        pg_admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        pg_admin.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        pg_admin.execute(f"GRANT USAGE ON SEQUENCE {schema}.events_global_position_seq TO {role}")
        info = psycopg.conninfo.conninfo_to_dict(PG_DSN)
        info.update(user=role, password="pw", options=f"-c search_path={schema}")

        def connect() -> Any:
            return psycopg.connect(**info)

        conn = connect()
        store.append(conn, ExpectedVersion.no_stream(), [event("a")])
        store.append(conn, ExpectedVersion.exact(1), [event("a")])
        conn.commit()
        assert store.read_aggregate_stream(conn, "Shop", "Order", "a").version == 2
        conn.close()
        projection = Count()
        with Processor(connect, store) as processor:
            assert processor.catch_up(projection) == 2
    finally:
        pg_admin.execute(f"DROP SCHEMA {schema} CASCADE")
        pg_admin.execute(f"DROP OWNED BY {role}")
        pg_admin.execute(f"DROP ROLE {role}")


def test_mysql_user_needs_process_for_projections_and_nothing_more() -> None:
    import pymysql

    from pupsourcing.adapters.mysql import MySQLStore

    admin = mysql_admin()
    tag = uuid.uuid4().hex[:12]
    database, user = f"t_{tag}", f"u_{tag}"
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    hosts = ("%", "localhost")
    for host in hosts:
        cursor.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'")
    try:
        store = MySQLStore()
        owner = pymysql.connect(host=MYSQL_HOST, user="root", password="", database=database)
        store.create_schema(owner)
        owner.commit()
        owner.close()
        for host in hosts:
            cursor.execute(f"GRANT SELECT, INSERT, UPDATE ON {database}.* TO '{user}'@'{host}'")

        def connect() -> Any:
            return pymysql.connect(host=MYSQL_HOST, user=user, password="pw", database=database)

        conn = connect()
        store.append(conn, ExpectedVersion.no_stream(), [event("a")])
        store.append(conn, ExpectedVersion.exact(1), [event("a")])
        conn.commit()
        conn.close()
        with (
            Processor(connect, store) as processor,
            pytest.raises(PermissionError, match="PROCESS privilege"),
        ):
            processor.catch_up(Count())
        for host in hosts:
            cursor.execute(f"GRANT PROCESS ON *.* TO '{user}'@'{host}'")
        with Processor(connect, store) as processor:
            assert processor.catch_up(Count()) == 2
    finally:
        cursor.execute(f"DROP DATABASE {database}")
        for host in hosts:
            cursor.execute(f"DROP USER '{user}'@'{host}'")
        admin.close()
