"""The demo a newcomer runs first: readable, short, and rerunnable."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pupsourcing", "demo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_demo_runs_on_a_sqlite_file_in_the_current_directory(tmp_path: Path) -> None:
    first = demo(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    out = first.stdout
    assert (tmp_path / "pupsourcing-demo.db").exists()
    assert len(out.splitlines()) <= 30, "must fit on one screen"
    assert "OptimisticConcurrencyError" in out
    assert "expected Exact(3), actual 4" in out
    assert "handled 8 new events" in out
    assert "order-1-a" in out
    assert "59.50" in out  # the read model: 12.50 + 39.00 + 8.00

    conn = sqlite3.connect(tmp_path / "pupsourcing-demo.db")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 8
    assert conn.execute("SELECT count(*) FROM demo_orders").fetchone()[0] == 3
    conn.close()


def test_demo_continues_on_rerun_and_resets_with_fresh(tmp_path: Path) -> None:
    assert demo(tmp_path).returncode == 0
    second = demo(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "run 2" in second.stdout
    assert "continuing" in second.stdout
    assert "handled 8 new events; checkpoint of 'demo_orders' is now 16" in second.stdout
    conn = sqlite3.connect(tmp_path / "pupsourcing-demo.db")
    assert conn.execute("SELECT count(*) FROM demo_orders").fetchone()[0] == 6
    conn.close()

    fresh = demo(tmp_path, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert "run 1" in fresh.stdout
    assert "positions 1..3" in fresh.stdout


def test_demo_text_names_the_orders_it_really_uses(tmp_path: Path) -> None:
    """Every order id the demo prints is one it appended in this run (no
    ``order-a`` when the aggregate is ``order-2-a``)."""
    for run_no in (1, 2):
        out = demo(tmp_path).stdout
        mentioned = set(re.findall(r"\border-[\w-]+", out))
        current = {f"order-{run_no}-{x}" for x in "abc"}
        earlier = {f"order-{n}-{x}" for n in range(1, run_no) for x in "abc"}
        assert mentioned <= current | earlier, out
        assert f"two clients both read order-{run_no}-a at version 3" in out
        assert f"Read the stream of order-{run_no}-a back" in out


def test_demo_db_option(tmp_path: Path) -> None:
    result = demo(tmp_path, "--db", str(tmp_path / "elsewhere.db"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere.db").exists()


def test_demo_leaves_a_database_it_did_not_make_alone(tmp_path: Path) -> None:
    """Pointed at an application's store by mistake, the demo neither
    appends its orders to it nor (``--fresh``) drops its tables."""
    from pupsourcing import Event, ExpectedVersion
    from pupsourcing.adapters.sqlite import SQLiteStore, connect

    shop = tmp_path / "shop.db"
    store, conn = SQLiteStore(), connect(shop)
    store.create_schema(conn)
    store.append(conn, ExpectedVersion.any(), [Event("Shop", "Cart", "c-1", "Opened", b"{}")])
    conn.commit()
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    for args in ((), ("--fresh",)):
        result = demo(tmp_path, "--db", str(shop), *args)
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        assert "not the demo's" in result.stderr, result.stderr
    conn = sqlite3.connect(shop)
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == tables
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()


def test_demo_continues_after_an_interrupted_run(tmp_path: Path) -> None:
    """Each order is committed on its own: a run stopped after its first order
    leaves it behind, and the next run must not append it again."""
    from pupsourcing import Event, ExpectedVersion
    from pupsourcing.adapters.sqlite import SQLiteStore, connect

    assert demo(tmp_path).returncode == 0
    conn = connect(tmp_path / "pupsourcing-demo.db")
    placed = Event("Sales", "Order", "order-2-a", "OrderPlaced", b'{"customer":"ada"}')
    SQLiteStore().append(conn, ExpectedVersion.no_stream(), [placed])
    conn.commit()
    conn.close()
    result = demo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run 3" in result.stdout
