"""SQLite files as other users and other programs see them: a file the
reader may only read, opened by the library and by the command line."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from cli_helpers import cli_argv, cli_env
from helpers import events
from pupsourcing import ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore, connect


def _as_reader(argv: list[str], folder: Path) -> list[str]:
    """``argv`` run by a process that may not write in ``folder``: root may
    write any file whatever its mode, so as root the command runs in a
    mount namespace of its own where ``folder`` is mounted read-only (a
    user switch would need the checkout and its venv readable to that
    user, which a clean clone in a private directory is not)."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    assert unshare is not None, "running as root needs unshare to make a read-only mount"
    mount = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    return [unshare, "--mount", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv]


@pytest.fixture
def read_only_db() -> Iterator[Path]:
    """A store file with two events, in rollback-journal mode (as a copy, a
    backup or another program leaves it), that its reader may not write: the
    file and its directory are read-only to it."""
    folder = Path(tempfile.mkdtemp(prefix="pupsourcing-ro-"))
    path = folder / "store.db"
    try:
        with closing(connect(path, wal=False)) as conn:
            store = SQLiteStore()
            store.create_schema(conn)
            store.append(conn, ExpectedVersion.no_stream(), events(2, "a"))
            conn.commit()
        path.chmod(0o444)
        folder.chmod(0o555)
        yield path
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def _run_as_reader(argv: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_reader(argv, folder),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd="/",
    )


_READ_THEN_WRITE = """
import sqlite3, sys
from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore, connect
store = SQLiteStore()
conn = connect(sys.argv[1], create=sys.argv[2] == "create")
stream = store.read_aggregate_stream(conn, "Shop", "Order", "a")
print(store.head_position(conn), len(stream.events))
try:
    store.append(conn, ExpectedVersion.exact(2), [Event("Shop", "Order", "a", "E", b"{}")])
except sqlite3.OperationalError as exc:
    print("append:", exc)

import asyncio
from pupsourcing.adapters.sqlite import connect_async
from pupsourcing.aio import AsyncSQLiteStore
async def read_async():
    conn = await connect_async(sys.argv[1])
    try:
        print(await AsyncSQLiteStore().head_position(conn))
    finally:
        await conn.close()
asyncio.run(read_async())
"""


@pytest.mark.parametrize("create", ["create", "existing"])
def test_connect_reads_a_file_it_may_not_write(read_only_db: Path, create: str) -> None:
    """``connect`` (and ``connect_async``) switch a file to WAL mode, which writes to it; on a
    file the process may only read, reads still work and writes fail with
    SQLite's own error."""
    argv = [sys.executable, "-c", _READ_THEN_WRITE, str(read_only_db), create]
    done = _run_as_reader(argv, read_only_db.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2 2",
        "append: attempt to write a readonly database",
        "2",  # connect_async too
    ]
    with closing(sqlite3.connect(read_only_db)) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone() == (2,)
        assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["projections", "status"], "store head: 2 in "),
        (["events", "tail", "-n", "5"], "#1  "),
        (["stream", "show", "Shop", "Order", "a"], "Shop/Order/a: 2 events, versions 1..2"),
    ],
    ids=["status", "events-tail", "stream-show"],
)
def test_the_command_line_reads_a_file_it_may_not_write(
    read_only_db: Path, command: list[str], shown: str
) -> None:
    argv = cli_argv(*command, "--db", f"sqlite:///{read_only_db}")
    done = _run_as_reader(argv, read_only_db.parent)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(shown), done.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["projections", "reset", "counter", "--yes"],
        [
            *["projections", "run", "--total-partitions", "2", "--partition-key", "0"],
            *["--create-indexes", "cli_projections:Counter"],
        ],
    ],
    ids=["reset", "create-indexes"],
)
def test_a_command_kept_from_the_write_lock_says_what_to_do(
    tmp_path: Path, command: list[str]
) -> None:
    """Another connection holding SQLite's write lock past the busy timeout
    is a one-line error that names the wait and how to lengthen it, not
    only the driver's ``database is locked``."""
    from cli_helpers import cli

    path = tmp_path / "store.db"
    with closing(connect(path)) as conn:
        store = SQLiteStore()
        store.create_schema(conn)
        store.update_checkpoint(conn, "counter", 0)
        conn.commit()
    holder = connect(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        done = cli(*command, "--db", f"sqlite:///{path}?timeout=0.2")
    finally:
        holder.rollback()
        holder.close()
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.endswith(
        "database error: database is locked; another connection held SQLite's "
        "write lock for longer than the busy timeout (set with ?timeout=SECONDS "
        "in the URL; default 5)"
    ), line
