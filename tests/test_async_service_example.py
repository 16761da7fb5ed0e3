"""examples/async_service: the asyncio service runs, serves concurrent
requests, keeps its read model exact, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import PG_DSN, pg_url, require, unavailable

MAIN = Path(__file__).parent.parent / "examples" / "async_service" / "main.py"


def request(base: str, method: str, path: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The service's --db argument, and a function running a query on that database."""
    if request.param == "sqlite":
        require("aiosqlite")
        path = tmp_path / "bank.db"

        def query(sql: str) -> Any:
            conn = sqlite3.connect(path)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()

        yield f"sqlite:///{path}", query
        return
    psycopg = require("psycopg")
    require("psycopg_pool")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
        raise
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{PG_DSN} options='-c search_path={schema}'"

    def pg_query(sql: str) -> Any:
        with psycopg.connect(dsn) as conn:
            return conn.execute(sql).fetchall()

    try:
        yield pg_url(schema), pg_query
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_the_service_appends_in_handlers_and_projects_alongside(
    database: tuple[str, Any], tmp_path: Path
) -> None:
    db, query = database
    service = subprocess.Popen(
        [sys.executable, str(MAIN), "--db", db, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = service.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on http://"), service.stderr.read()  # type: ignore[union-attr]
        base = line.split()[-1]

        assert request(base, "POST", "/accounts/acct-1/deposits", {"amount": 100}) == (
            201,
            {"version": 1},
        )
        assert request(base, "POST", "/accounts/acct-1/deposits", {"amount": 50})[0] == 201
        assert request(base, "POST", "/accounts/acct-1/withdrawals", {"amount": 30})[0] == 201
        assert request(base, "POST", "/accounts/acct-1/withdrawals", {"amount": 500}) == (
            409,
            {"error": "insufficient funds"},
        )
        assert request(base, "POST", "/accounts/acct-1/deposits", {"amount": -1})[0] == 400
        # 20 concurrent deposits to one account: optimistic concurrency, retried
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda _: request(base, "POST", "/accounts/acct-1/deposits", {"amount": 1})[0],
                    range(20),
                )
            )
        assert statuses == [201] * 20
        assert request(base, "POST", "/accounts/acct-2/deposits", {"amount": 7})[0] == 201

        # The read model catches up asynchronously (acct-2's event is the last).
        expected = {
            "/accounts/acct-1": (200, {"balance": 140, "version": 23}),
            "/accounts/acct-2": (200, {"balance": 7, "version": 1}),
        }
        deadline = time.monotonic() + 15
        while (seen := {path: request(base, "GET", path) for path in expected}) != expected:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert request(base, "GET", "/accounts/nobody")[0] == 404

        service.send_signal(signal.SIGTERM)
        assert service.wait(15) == 0
        out, err = service.communicate()
        assert "stopped" in out
        assert "Traceback" not in err, err
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert query("SELECT count(*) FROM events") == [(24,)]
    assert query(
        "SELECT account_id, balance, version FROM account_balances ORDER BY account_id"
    ) == [("acct-1", 140, 23), ("acct-2", 7, 1)]
    assert query("SELECT last_global_position FROM projection_checkpoints") == [(24,)]


@pytest.mark.parametrize("how", ["--db", "PUPSOURCING_DB"])
def test_a_relative_sqlite_url_is_a_file_in_the_current_directory(how: str, tmp_path: Path) -> None:
    """``sqlite:///bank2.db`` (the command line's form) is ./bank2.db, never
    /bank2.db; the URL comes from --db or, as for every example, PUPSOURCING_DB."""
    require("aiosqlite")
    url = f"sqlite:///bank2_{uuid.uuid4().hex[:8]}.db"
    argv = ["--db", url] if how == "--db" else []
    env = {k: v for k, v in os.environ.items() if k != "PUPSOURCING_DB"}
    if how == "PUPSOURCING_DB":
        env["PUPSOURCING_DB"] = url
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    result = subprocess.run(
        [sys.executable, str(MAIN), *argv, "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name = url.removeprefix("sqlite:///")
    assert (tmp_path / name).is_file()
    assert not Path("/", name).exists()
    conn = sqlite3.connect(tmp_path / name)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] > 0
    finally:
        conn.close()
