"""Instructions per event on SQLite, store against the bare driver: figures
that do not move with the machine's load.

Wall-clock ratios on a shared 2-core machine move by 10-20% from run to run.
Valgrind's callgrind counts the instructions a process runs instead: the
same count for the same code and data, whatever else the machine does (it
does not count the kernel's work: SQLite's file writes and syncs). SQLite
runs inside the process, so the count covers the database's work too; a
client/server database's would not, hence SQLite only.

    W3/100   catch-up of N events by a no-op projection, batch 100,
             against the bare driver's ordered paging with pages of 100
    W3/1000  the same at batch 1000
    W3r/1000 the same with a projection that reads five fields of each event
             (what a read model's handler does), against the paging reading
             the same five columns of each row: a no-op projection would not
             show what reading a field costs
    W4       5 reads of one 1,000-event stream, against the same SELECT

One process under callgrind runs every phase, store then bare driver, with
every page in SQLite's cache first; callgrind dumps its count at each phase
boundary. Each figure is a phase's instructions over the events it handled
(a catch-up also handles the stream's). Needs ``valgrind`` (Debian's
package).

    python bench/instructions.py            # 5,000 events, about a minute
    python bench/instructions.py --quick    # W3/1000 and W3r/1000 on 500 events
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, make_events
from projections import Noop, page_through

from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.adapters.sqlite import SQLiteStore, connect
from pupsourcing.adapters.sqlite._dialect import SQLiteDialect
from pupsourcing.projection import Processor, ProcessorConfig

STREAM = 1000
STREAM_READS = 5
WORKLOADS = ("W3/100", "W3/1000", "W3r/1000", "W4")
READ = (3, 4, 6, 8, 0)
"""The columns W3r's bare side reads: aggregate_id, aggregate_version,
event_type, payload, global_position (its projection reads those fields)."""


class Reading:
    """A projection whose handler reads what a read model's typically does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.size += (
            len(event.aggregate_id)
            + event.aggregate_version
            + len(event.event_type)
            + len(event.payload)
            + event.global_position
        )


def page_reading(conn: sqlite3.Connection, sql: str, batch: int) -> int:
    """:func:`page_through`, reading :data:`READ` of each row as ``Reading`` does."""
    aggregate_id, version, event_type, payload, position = READ
    cursor = conn.cursor()
    rows = size = last = 0
    while True:
        cursor.execute(sql, (last, batch))
        page = cursor.fetchall()
        if not page:
            return rows
        for row in page:
            size += (
                len(row[aggregate_id])
                + row[version]
                + len(row[event_type])
                + len(row[payload])
                + row[position]
            )
        rows += len(page)
        last = page[-1][0]


def make_database(path: Path, events: int) -> None:
    """``events`` events of 10-event aggregates, then one 1,000-event stream."""
    store = SQLiteStore()
    conn = connect(path)
    store.create_schema(conn)
    conn.commit()
    for start in range(0, events, 10):
        store.append(conn, ExpectedVersion.any(), make_events(f"a{start}", 10, start))
        conn.commit()
    for start in range(0, STREAM, 100):
        store.append(conn, ExpectedVersion.any(), make_events("stream", 100, start))
        conn.commit()
    conn.close()


class _SteadyDialect(SQLiteDialect):
    """Without the processors' turns at the write lock: they are measured
    in wall-clock time, and callgrind runs the process about 50 times
    slower, so a batch that takes milliseconds natively holds the lock past
    the turn's second here and pauses where a native run never would."""

    write_lock_turn = None


class _SteadyStore(SQLiteStore):
    dialect_class = _SteadyDialect


def _store_side(workload: str, conn: sqlite3.Connection, name: str = "") -> int:
    store = _SteadyStore()
    if workload == "W4":
        for _ in range(STREAM_READS):
            read = len(store.read_aggregate_stream(conn, "Bench", "Account", "stream"))
            assert read == STREAM, read
        return STREAM_READS * STREAM
    batch = int(workload.split("/")[1])
    config = ProcessorConfig(batch_size=batch, logger=logging.getLogger("instructions"))
    projection = (
        Reading(name or f"reading_{batch}")
        if workload.startswith("W3r")
        else Noop(name or f"noop_{batch}")
    )
    with Processor(conn, store, config) as processor:
        return processor.catch_up(projection)


def _raw_side(workload: str, conn: sqlite3.Connection) -> int:
    dialect = SQLiteStore().dialect
    if workload == "W4":
        for _ in range(STREAM_READS):
            rows = conn.execute(dialect.read_stream_sql, ("Bench", "Account", "stream"))
            read = len(rows.fetchall())
            assert read == STREAM, read
        return STREAM_READS * STREAM
    sql = dialect.fetch_statement(0, None, 0, (), (), None).sql
    page = page_reading if workload.startswith("W3r") else page_through
    return page(conn, sql, int(workload.split("/")[1]))


def child(workloads: Sequence[str], path: str) -> None:
    """Runs under callgrind, which dumps its counts at each ``sched_yield``:
    set-up, then the store and the bare driver for each workload in turn.
    Prints the events each phase handled."""
    conn = sqlite3.connect(path)
    _raw_side("W3/1000", conn)  # every page in SQLite's cache, for both sides
    # What a store and its processors pay once per process (imports,
    # prepared statements, first-use checks) in the set-up phase too: the
    # phases count the steady state.
    _store_side("W3r/1000", conn, "warm-up")
    counts = []
    for workload in workloads:
        for side in (_store_side, _raw_side):
            os.sched_yield()
            counts.append(side(workload, conn))
    os.sched_yield()
    conn.close()
    print(" ".join(map(str, counts)))


def measure(workloads: Sequence[str], events: int) -> list[tuple[str, float, float]]:
    """(workload, store's instructions per event, bare driver's) for each."""
    with tempfile.TemporaryDirectory(prefix="pupsourcing-instructions-") as directory:
        path = Path(directory) / "bench.db"
        make_database(path, events)
        out = Path(directory) / "callgrind.out"
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-before=sched_yield",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                ",".join(workloads),
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same count each run
        )
        if result.returncode != 0:
            raise RuntimeError(f"the run under callgrind failed:\n{result.stderr[-2000:]}")
        handled = [int(n) for n in result.stdout.split()]
        # out.1 is the set-up; then one dump per phase, in order.
        phases = [_total(Path(f"{out}.{i}")) for i in range(2, 2 + len(handled))]
    rows = []
    for i, workload in enumerate(workloads):
        store, raw = (phases[2 * i + k] / handled[2 * i + k] for k in (0, 1))
        rows.append((workload, store, raw))
    return rows


def _total(dump: Path) -> int:
    found = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(found[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="W3/1000 and W3r/1000 on 500 events")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0].split(","), args.child[1])
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    workloads, events = (("W3/1000", "W3r/1000"), 500) if args.quick else (WORKLOADS, args.events)
    print(f"SQLite {sqlite3.sqlite_version}, instructions per event (callgrind), {events:,} events")
    print(f"{'workload':<9} {'store':>9} {'bare':>9}  ratio (bare / store)")
    for workload, store, raw in measure(workloads, events):
        print(f"{workload:<9} {store:>9,.0f} {raw:>9,.0f}  {raw / store:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
