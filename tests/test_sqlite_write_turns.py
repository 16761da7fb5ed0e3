"""A SQLite processor catching up with a handler that writes through ``tx``
leaves the write lock free now and then, so that other processes' writers,
whose busy handler sleeps and retries (up to 100 ms between tries) rather
than queue, get a turn instead of failing with ``database is locked``."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from cli_helpers import cli_env
from helpers import events
from pupsourcing import ExpectedVersion
from pupsourcing.adapters.sqlite import SQLiteStore, connect

WORKER = Path(__file__).with_name("sqlite_slow_catch_up.py")
EVENTS = 5000
"""About 6 s of catch-up at 1 ms per event: longer than the default busy
timeout (5 s), so an append that never got a turn fails."""
SLOWEST_WAIT = 1.5
"""The longest an append may wait: the processor holds the lock for about a
second (``SQLiteDialect.write_lock_turn``) before it leaves it free for
longer than the busy handler sleeps, plus the batch under way and slack for
a loaded machine."""


@pytest.mark.parametrize("api", ["sync", "async"])
def test_appends_from_another_process_get_a_turn(tmp_path: Path, api: str) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore()
    with closing(connect(path)) as conn:
        store.create_schema(conn)
        conn.execute("CREATE TABLE seen (position INTEGER PRIMARY KEY)")
        for stream in range(EVENTS // 500):
            store.append(conn, ExpectedVersion.no_stream(), events(500, f"bulk-{stream}"))
        conn.commit()
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(path), api],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    waits: list[float] = []
    failures: list[str] = []
    with closing(connect(path)) as conn:  # the default busy timeout
        try:
            while conn.execute("SELECT count(*) FROM seen").fetchone()[0] == 0:
                assert worker.poll() is None, "the processor ended before it began"
                time.sleep(0.01)
            while worker.poll() is None:
                started = time.monotonic()
                try:
                    store.append(conn, ExpectedVersion.any(), events(1, f"app-{len(waits)}"))
                    conn.commit()
                except Exception as exc:
                    conn.rollback()
                    failures.append(str(exc))
                waits.append(time.monotonic() - started)
                time.sleep(0.3)
        finally:
            out, _ = worker.communicate(timeout=60)
    handled = int(out.split()[-1])
    assert handled >= EVENTS
    assert failures == []
    assert max(waits) <= SLOWEST_WAIT, [round(w, 3) for w in waits]
    assert len(waits) >= 4, "too few appends while the processor caught up"
