"""Every example runs as written, in quick mode, against the local databases.

Each example runs in a subprocess with its own temporary working directory;
the PostgreSQL and MySQL examples create a schema or database with a random
name, so parallel runs never collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import MYSQL_HOST, PG_DSN, mysql_admin, unavailable
from nats_helpers import NATS_URL

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUNNABLE = sorted(path.parent for path in EXAMPLES.glob("*/main.py"))
NOTES = {"cockroachdb"}
"""Example directories that hold only a README."""


def test_every_example_directory_is_runnable_or_a_note() -> None:
    directories = {path.name for path in EXAMPLES.iterdir() if path.is_dir()}
    directories.discard("__pycache__")
    assert directories == {path.name for path in RUNNABLE} | NOTES
    for name in directories:
        assert (EXAMPLES / name / "README.md").exists(), name
    index = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in directories:
        assert f"[{name}]({name}/)" in index, f"examples/README.md does not list {name}"


def server_url(source: str) -> str | None:
    """The test servers' URL for an example written for PostgreSQL or MySQL
    (its PUPSOURCING_DB default says which); ``None`` for a SQLite one."""
    if '"postgresql://' in source:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(PG_DSN)
        password = f":{quote(str(info['password']), safe='')}" if info.get("password") else ""
        user = quote(str(info.get("user", "postgres")), safe="")
        host, port = info.get("host", "127.0.0.1"), info.get("port", 5432)
        return f"postgresql://{user}{password}@{host}:{port}/{info.get('dbname', 'test')}"
    if '"mysql://' in source:
        return f"mysql://root@{MYSQL_HOST}:3306/test"
    return None


def example_env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PUPSOURCING_DB"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    if url is not None:
        env["PUPSOURCING_DB"] = url
    return env


@pytest.mark.parametrize("example", RUNNABLE, ids=lambda path: path.name)
def test_every_example_takes_its_database_from_pupsourcing_db(
    example: Path, tmp_path: Path
) -> None:
    """One setting for all (examples/README.md, "Settings"); a URL naming a
    database the example is not written for is refused in one line, before
    anything is written."""
    source = (example / "main.py").read_text(encoding="utf-8")
    assert "PUPSOURCING_DB" in source
    assert "PUPSOURCING_PG" not in source
    assert "PUPSOURCING_MYSQL" not in source
    wrong = "sqlite:///wrong.db" if server_url(source) else "mysql://app:hunter2@127.0.0.1:1/x"
    result = subprocess.run(
        [sys.executable, str(example / "main.py"), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=example_env(wrong),
    )
    assert result.returncode != 0, result.stdout
    assert "PUPSOURCING_DB names" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def require_servers(source: str) -> None:
    if "import psycopg" in source:
        import psycopg

        try:
            psycopg.connect(PG_DSN, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            unavailable("PostgreSQL", exc)
    if "import pymysql" in source:
        mysql_admin().close()
    if "import nats" in source:
        from nats_helpers import nats_reachable

        nats_reachable()


@pytest.mark.parametrize("example", RUNNABLE, ids=lambda path: path.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    source = (example / "main.py").read_text(encoding="utf-8")
    require_servers(source)
    result = subprocess.run(
        [sys.executable, str(example / "main.py"), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**example_env(server_url(source)), "PUPSOURCING_NATS": NATS_URL},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), "an example should show what it did"
