"""Signals to the real ``pupsourcing`` process at any moment of its life:
while Python imports the command line, while a command starts, while it
runs. A long-running command (``projections run``, ``relay nats``, ``ui``,
``events tail -f``) stops cleanly, exit 0; another is interrupted, 128 + the
signal's number; never a traceback."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from cli_helpers import cli_argv, cli_env, cli_process
from conftest import Backend, require
from test_cli_run import Running, count, prepare, running  # noqa: F401 (a fixture)

SIGNALS = [signal.SIGINT, signal.SIGTERM]

HOOK = """\
import os, signal, sys

class _SignalOnImport:
    \"\"\"Signals this process when the command line imports its first command.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "pupsourcing.cli.demo":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.Signals[os.environ["SIGNAL_ON_IMPORT"]])
        return None

sys.meta_path.insert(0, _SignalOnImport())
"""


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("command", "stops"),
    [
        (("projections", "run", "cli_projections:Recorder"), True),
        (("projections", "run", "cli_projections:Recorder", "--partitions", "2"), True),
        (("relay", "nats", "--stream", "NEVER"), True),
        (("ui",), True),
        (("events", "tail", "-f"), True),
        (("events", "tail"), False),
        (("projections", "status"), False),
    ],
    ids=["run", "partitions", "relay", "ui", "tail-f", "tail", "status"],
)
def test_a_signal_while_the_command_line_imports(
    command: tuple[str, ...], stops: bool, signum: signal.Signals, tmp_path: Path
) -> None:
    """Before any command runs: a long-running one stops (0), another is
    interrupted (128 + n); not a traceback, nor killed by the signal."""
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    result = subprocess.run(
        [*cli_argv(*command), "--db", f"sqlite:///{tmp_path / 'never.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(
            SIGNAL_ON_IMPORT=signum.name,
            PYTHONPATH=f"{tmp_path}:{cli_env()['PYTHONPATH']}",
        ),
    )
    assert result.returncode == (0 if stops else 128 + signum), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never.db").exists(), "stopped before opening the database"


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("partitions", [(), ("--partitions", "2")], ids=["one", "partitions"])
def test_a_signal_while_projections_run_starts_is_a_clean_stop(
    sqlite_db: Backend, signum: signal.Signals, partitions: tuple[str, ...]
) -> None:
    """The signal comes while the projections are loaded: nothing ran yet,
    and the command stops as it would later on, exit 0."""
    prepare(sqlite_db, aggregates=2, per_aggregate=2)
    result = cli_process(
        "projections", "run", "cli_signal_at_import:Recorder", *partitions,
        "--db", sqlite_db.url, SIGNAL_AT_IMPORT=signum.name,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "started" not in result.stderr, "stopped before starting workers"
    assert count(sqlite_db) == 0


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_ui_stops_cleanly_on_a_signal(sqlite_db: Backend, signum: signal.Signals) -> None:
    require("uvicorn")
    from console_helpers import start_server

    server = start_server(sqlite_db.url)
    server.process.send_signal(signum)
    _, stderr = server.process.communicate(timeout=30)
    assert server.process.returncode == 0, stderr
    assert "Traceback" not in stderr
