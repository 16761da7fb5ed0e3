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
    require_servers((example / "main.py").read_text(encoding="utf-8"))
    result = subprocess.run(
        [sys.executable, str(example / "main.py"), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "PUPSOURCING_PG": PG_DSN,
            "PUPSOURCING_MYSQL_HOST": MYSQL_HOST,
            "PUPSOURCING_NATS": NATS_URL,
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), "an example should show what it did"
