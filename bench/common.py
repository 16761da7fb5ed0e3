"""Workloads, timing and the results table shared by every store benchmark.

A benchmark script (``bench/<database>_store.py``) describes its database as a
:class:`Target`: a factory for connections, the store under test, a *raw
baseline* that does the same SQL work by hand with the bare driver, and a way
to empty the tables. :func:`main` then runs the same workloads on both sides
and prints one table with each figure and the ratio store/raw::

    W1   batch append: T transactions x N events (~200-byte JSON payloads)
    W2   single-event append: T transactions on one connection
    W2c  single-event append: K threads x T transactions, one connection each
    W4   full read of one S-event stream, R times

Each workload runs ``rounds`` times on each side, alternating which side goes
first, from emptied tables; the best rate of each side is reported (the least
disturbed run on a shared machine). Every run is checked: the rows must really
be there, the reads must return the whole stream.

Both sides append with "any expected version" semantics (bump the aggregate
head, insert the events with the versions that follow) inside the caller's
transaction; the workload commits. Events are built before the clock starts.

A script for another database is short::

    from common import Side, Target, Unavailable, main

    def build() -> Target:
        ...  # create a private database/schema, or raise Unavailable(reason)
        return Target(
            database="MariaDB 10.11 (PyMySQL 1.1)",
            connect=lambda autocommit: my_connect(autocommit),
            store=MySQLStore(),
            raw=Side(append=raw_append, read_stream=raw_read_stream),
            reset=lambda conn: ...,  # empty the three tables
            close=drop_it,
            notes=["what the raw baseline does"],
        )

    if __name__ == "__main__":
        sys.exit(main(build))

tests/test_bench.py runs every ``bench/*.py`` script but this one with
``--quick``; exit with :data:`UNAVAILABLE_EXIT_CODE` (``main`` does, on
:class:`Unavailable`) when the database cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cpu import CpuClock

from pupsourcing import Event, ExpectedVersion

BOUNDED_CONTEXT = "Bench"
AGGREGATE_TYPE = "Account"


class Unavailable(Exception):
    """The database of a benchmark cannot be reached."""


UNAVAILABLE_EXIT_CODE = 3
"""What a benchmark script exits with when its database is unreachable."""


@dataclass(frozen=True)
class Scale:
    """How much work each workload does."""

    w1_transactions: int = 200
    w1_batch: int = 100
    w2_transactions: int = 5000
    w2c_threads: int = 8
    w2c_per_thread: int = 1000
    w4_stream: int = 1000
    w4_reads: int = 200
    rounds: int = 3


FULL = Scale()
QUICK = Scale(
    w1_transactions=4,
    w1_batch=20,
    w2_transactions=20,
    w2c_threads=2,
    w2c_per_thread=5,
    w4_stream=30,
    w4_reads=3,
    rounds=1,
)

Connection = Any
AppendFn = Callable[[Connection, Sequence[Event]], object]
"""Append the events of one aggregate (any expected version) in the connection's
current transaction; never commits."""
ReadStreamFn = Callable[[Connection, str, str, str], Sequence[Any]]
"""Read one aggregate's whole stream: (conn, bounded_context, aggregate_type,
aggregate_id) -> its events or rows, in version order."""


@dataclass(frozen=True)
class Side:
    """One of the two things compared."""

    append: AppendFn
    read_stream: ReadStreamFn


def store_side(store: Any) -> Side:
    """The store under test as a :class:`Side`."""

    def append(conn: Connection, events: Sequence[Event]) -> object:
        return store.append(conn, ExpectedVersion.any(), events)

    def read_stream(
        conn: Connection, bounded_context: str, aggregate_type: str, aggregate_id: str
    ) -> Sequence[Any]:
        stream = store.read_aggregate_stream(conn, bounded_context, aggregate_type, aggregate_id)
        return stream.events  # type: ignore[no-any-return]

    return Side(append, read_stream)


@dataclass
class Target:
    """One database as a benchmark script describes it."""

    database: str
    """Shown in the title, e.g. ``"PostgreSQL 15.4 (psycopg 3.2.1)"``."""
    connect: Callable[[bool], Connection]
    """A new connection; the argument says whether it is in autocommit mode
    (used for reads)."""
    store: Any
    raw: Side
    reset: Callable[[Connection], None]
    """Empty the event store tables, given an autocommit connection."""
    close: Callable[[], None] = lambda: None
    """Drop whatever the script created (called once at the end)."""
    notes: list[str] = field(default_factory=list)
    """Printed under the table: what the raw baseline does, server settings."""


def payload(aggregate_id: str, index: int) -> bytes:
    """A JSON payload of about 200 bytes."""
    body = {
        "account": aggregate_id,
        "sequence": index,
        "amount_cents": 1000 + index * 7 % 9000,
        "currency": "EUR",
        "reference": f"invoice-{index:08d}",
        "memo": "",
    }
    body["memo"] = "x" * max(0, 200 - len(json.dumps(body)))
    return json.dumps(body).encode()


def make_events(aggregate_id: str, count: int, first: int = 0) -> list[Event]:
    return [
        Event(
            BOUNDED_CONTEXT,
            AGGREGATE_TYPE,
            aggregate_id,
            "Deposited",
            payload(aggregate_id, first + i),
            correlation_id=f"corr-{aggregate_id}",
        )
        for i in range(count)
    ]


def count_events(target: Target, conn: Connection) -> int:
    cursor = conn.cursor()
    try:
        cursor.execute(f"SELECT count(*) FROM {target.store.config.events_table}")
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()


_last_cpu: list[tuple[float, bool]] = []
"""The CPU seconds (client and server, see bench/cpu.py) of the last append
run, and whether the server's share was counted."""


def _append_loop(target: Target, side: Side, batches: Sequence[Sequence[Event]]) -> float:
    """Append each batch in its own transaction on one connection; seconds taken."""
    conn = target.connect(False)
    try:
        clock = CpuClock([conn])
        clock.start()
        start = time.perf_counter()
        for batch in batches:
            side.append(conn, batch)
            conn.commit()
        elapsed = time.perf_counter() - start
        _last_cpu[:] = [(clock.stop(), clock.complete)]
        return elapsed
    finally:
        conn.close()


@dataclass(frozen=True)
class Workload:
    key: str
    describe: Callable[[Scale], str]
    unit: str
    prepare: Callable[[Target, Scale], Any]
    """Builds the input (outside the clock); may write to the database."""
    run: Callable[[Target, Side, Scale, Any], float]
    """Returns seconds taken."""
    amount: Callable[[Scale], int]
    """Events or reads per run."""
    expected_rows: Callable[[Scale], int]


def _w1_prepare(target: Target, scale: Scale) -> list[list[Event]]:
    return [make_events(f"w1-{i}", scale.w1_batch) for i in range(scale.w1_transactions)]


def _w1_run(target: Target, side: Side, scale: Scale, batches: list[list[Event]]) -> float:
    return _append_loop(target, side, batches)


W2_AGGREGATES = 100


def _w2_prepare(target: Target, scale: Scale) -> list[list[Event]]:
    return [make_events(f"w2-{i % W2_AGGREGATES}", 1, i) for i in range(scale.w2_transactions)]


def _w2c_prepare(target: Target, scale: Scale) -> list[list[list[Event]]]:
    return [
        [make_events(f"w2c-{t}-{i % 10}", 1, i) for i in range(scale.w2c_per_thread)]
        for t in range(scale.w2c_threads)
    ]


def _w2c_run(target: Target, side: Side, scale: Scale, work: list[list[list[Event]]]) -> float:
    connections = [target.connect(False) for _ in work]
    ready = threading.Barrier(len(work) + 1)
    errors: list[BaseException] = []

    def worker(conn: Connection, batches: list[list[Event]]) -> None:
        ready.wait()
        try:
            for batch in batches:
                side.append(conn, batch)
                conn.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(conn, batches))
        for conn, batches in zip(connections, work, strict=True)
    ]
    clock = CpuClock(connections)
    try:
        for thread in threads:
            thread.start()
        clock.start()
        ready.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        _last_cpu[:] = [(clock.stop(), clock.complete)]
    finally:
        for conn in connections:
            conn.close()
    if errors:
        raise errors[0]
    return elapsed


def _w4_prepare(target: Target, scale: Scale) -> str:
    aggregate_id = "w4"
    conn = target.connect(False)
    try:
        for offset in range(0, scale.w4_stream, 500):
            count = min(500, scale.w4_stream - offset)
            target.store.append(
                conn, ExpectedVersion.any(), make_events(aggregate_id, count, offset)
            )
        conn.commit()
    finally:
        conn.close()
    return aggregate_id


def _w4_run(target: Target, side: Side, scale: Scale, aggregate_id: str) -> float:
    conn = target.connect(True)
    try:
        start = time.perf_counter()
        for _ in range(scale.w4_reads):
            got = side.read_stream(conn, BOUNDED_CONTEXT, AGGREGATE_TYPE, aggregate_id)
            if len(got) != scale.w4_stream:
                raise AssertionError(f"W4 read {len(got)} events, expected {scale.w4_stream}")
        return time.perf_counter() - start
    finally:
        conn.close()


WORKLOADS = [
    Workload(
        "W1",
        lambda s: f"batch append, {s.w1_transactions} tx x {s.w1_batch} events",
        "events/s",
        _w1_prepare,
        _w1_run,
        lambda s: s.w1_transactions * s.w1_batch,
        lambda s: s.w1_transactions * s.w1_batch,
    ),
    Workload(
        "W2",
        lambda s: f"single-event append, {s.w2_transactions} tx, 1 connection",
        "events/s",
        _w2_prepare,
        _w1_run,
        lambda s: s.w2_transactions,
        lambda s: s.w2_transactions,
    ),
    Workload(
        "W2c",
        lambda s: f"single-event append, {s.w2c_threads} threads x {s.w2c_per_thread} tx",
        "events/s",
        _w2c_prepare,
        _w2c_run,
        lambda s: s.w2c_threads * s.w2c_per_thread,
        lambda s: s.w2c_threads * s.w2c_per_thread,
    ),
    Workload(
        "W4",
        lambda s: f"read a {s.w4_stream}-event stream, {s.w4_reads} times",
        "reads/s",
        _w4_prepare,
        _w4_run,
        lambda s: s.w4_reads,
        lambda s: s.w4_stream,
    ),
]


@dataclass
class Result:
    workload: Workload
    scale: Scale
    store_rate: float = 0.0
    raw_rate: float = 0.0
    store_cpu: float = float("inf")
    """The store side's least CPU seconds (client and server) per event of
    an append workload's runs; ``inf`` when not measured."""
    raw_cpu: float = float("inf")
    cpu_complete: bool = True
    """Whether the server's share was counted (see bench/cpu.py)."""

    @property
    def ratio(self) -> float:
        return self.store_rate / self.raw_rate if self.raw_rate else float("nan")


def _reset(target: Target) -> None:
    conn = target.connect(True)
    try:
        target.reset(conn)
    finally:
        conn.close()


def _check_rows(target: Target, expected: int, what: str) -> None:
    conn = target.connect(True)
    try:
        found = count_events(target, conn)
    finally:
        conn.close()
    if found != expected:
        raise AssertionError(f"{what}: {found} events stored, expected {expected}")


def run_workloads(
    target: Target,
    scale: Scale,
    only: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Run each workload ``scale.rounds`` times per side; best rate per side."""
    sides = {"store": store_side(target.store), "raw": target.raw}
    results = []
    for workload in WORKLOADS:
        if only and workload.key not in only:
            continue
        result = Result(workload, scale)
        for round_ in range(scale.rounds):
            order = ["raw", "store"] if round_ % 2 == 0 else ["store", "raw"]
            for name in order:
                _reset(target)
                work = workload.prepare(target, scale)
                _last_cpu.clear()
                seconds = workload.run(target, sides[name], scale, work)
                _check_rows(target, workload.expected_rows(scale), f"{workload.key} {name}")
                rate = workload.amount(scale) / seconds
                progress(f"{workload.key} {name:5} round {round_ + 1}: {rate:,.0f} {workload.unit}")
                if name == "store":
                    result.store_rate = max(result.store_rate, rate)
                else:
                    result.raw_rate = max(result.raw_rate, rate)
                if _last_cpu:
                    cpu_seconds, complete = _last_cpu[0]
                    per_event = cpu_seconds / workload.amount(scale)
                    if name == "store":
                        result.store_cpu = min(result.store_cpu, per_event)
                    else:
                        result.raw_cpu = min(result.raw_cpu, per_event)
                    result.cpu_complete = result.cpu_complete and complete
        results.append(result)
    _reset(target)
    return results


def format_table(target: Target, results: Sequence[Result]) -> str:
    rounds = results[0].scale.rounds if results else 0
    lines = [
        f"{target.database}: {type(target.store).__name__} vs raw driver "
        f"(best of {rounds} round{'s' if rounds != 1 else ''}; "
        f"Python {platform.python_version()})",
        "",
        f"{'':4} {'workload':46} {'store':>10} {'raw':>10} {'unit':8} {'store/raw':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.workload.key:4} {r.workload.describe(r.scale):46} {r.store_rate:>10,.0f} "
            f"{r.raw_rate:>10,.0f} {r.workload.unit:8} {r.ratio:>8.2f}x"
        )
    if target.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in target.notes)
    return "\n".join(lines)


def main(build: Callable[[], Target], argv: Sequence[str] | None = None) -> int:
    """Command line of a benchmark script: ``[--quick] [--rounds N] [--only W1,W4]``."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    parser.add_argument("--rounds", type=int, help="runs per side and workload (best is kept)")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W4")
    parser.add_argument("--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.rounds:
        scale = replace(scale, rounds=args.rounds)
    only = [key.strip() for key in args.only.split(",") if key.strip()]
    try:
        target = build()
    except Unavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    try:
        results = run_workloads(
            target,
            scale,
            only,
            progress=(lambda line: print(line, file=sys.stderr))
            if args.verbose
            else lambda _: None,
        )
    finally:
        target.close()
    print(format_table(target, results))
    return 0


SETTLE = {
    "postgres": ["VACUUM (ANALYZE) events", "CHECKPOINT"],
    "mysql": ["ANALYZE TABLE events"],
    "mysqlclient": ["ANALYZE TABLE events"],
    "sqlite": ["ANALYZE", "PRAGMA wal_checkpoint(TRUNCATE)"],
}


def settle(database: str, target: Target) -> None:
    """Let the database settle after a bulk load, as it would shortly on its
    own, so that neither stale statistics nor the load's background work land
    inside the next measurement: refresh the planner's statistics (without
    them PostgreSQL plans filtered reads of a freshly filled table for far
    fewer rows than there are: a bitmap scan and a sort instead of an ordered
    index scan), and on PostgreSQL and SQLite write the load out of the WAL
    now instead of in a checkpoint during a timed run."""
    conn = target.connect(True)
    try:
        cursor = conn.cursor()
        for sql in SETTLE[database]:
            cursor.execute(sql)
            if cursor.description is not None:  # MySQL's ANALYZE TABLE reports rows
                cursor.fetchall()
    finally:
        conn.close()


def machine() -> str:
    """This machine as the system reports it now: processor model and core
    count, memory, operating system and Python (ratios between workloads
    that scale differently, W2c and W5, depend on them)."""
    import os
    from pathlib import Path

    model = platform.processor() or platform.machine()
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024**2:.1f} GiB RAM"
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores or 0} cores{memory}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )
