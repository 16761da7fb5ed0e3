"""Running the real ``pupsourcing`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without a stray $PUPSOURCING_DB, with this
    checkout (and tests/, for the projection modules) importable."""
    env = {k: v for k, v in os.environ.items() if k != "PUPSOURCING_DB"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(extra)
    return env


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pupsourcing", *args]


def cli(
    *args: str,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        input=input if input is not None else "",
        cwd=cwd,
        timeout=timeout,
        env=cli_env(**env),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A failure reported as one line on stderr, no traceback; returns the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith("pupsourcing "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def execute(conn: Any, sql: str) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
