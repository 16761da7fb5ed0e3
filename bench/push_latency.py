"""Push wake-up: latency from an append's commit to the projection's
``handle``, with and without push, and what an idle processor costs.

    P1   end-to-end latency: COUNT single-event appends (each committed on
         the appender's own connection, after a random pause of up to one
         ``poll_interval`` so commits fall anywhere in the poll cycle), each
         timed from the appender calling ``commit`` (the earliest the
         event can be seen; from the call's return, a processor woken by
         the commit's notification could come first) to ``handle`` being
         called by a running Processor (default ``ProcessorConfig``,
         poll_interval 0.1 s);
         p50, p99 and max, with push and with push turned off (the processor
         only polls). Target on PostgreSQL: p99 <= 10 ms with push.
    P2   idle cost: statements an idle processor sends per second (libpq
         trace on PostgreSQL, sqlite3's trace callback on SQLite), at the
         default poll_interval and at 5 s (push makes a long interval cheap
         without making the processor slow).

PostgreSQL wakes on the append's NOTIFY (any connection or process); SQLite
on the in-process signal of the store's ``append`` (the processor's poll may
come before the commit, then a quick retry finds the event).

    python bench/push_latency.py [--count N] [--db postgres,sqlite] [--idle SECONDS] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Target, Unavailable

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.projection._waiter import Waiter

TARGET_P99_MS = 10.0
SENT = re.compile(r"\t(Bind|Query)\t")
"""A statement in a libpq trace line of the client (F): Bind or Query."""


class Clocked:
    """A projection that records when each event reached it."""

    name = "push_latency"

    def __init__(self) -> None:
        self.handled: dict[int, float] = {}
        self.arrived = threading.Condition()

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        now = time.monotonic()  # system-wide: comparable with another process's
        with self.arrived:
            self.handled[event.global_position] = now
            self.arrived.notify_all()

    def wait_for(self, position: int) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: position in self.handled, 30.0):
                raise RuntimeError(f"event {position} was not handled within 30 s")
            return self.handled[position]


@contextlib.contextmanager
def running(
    target: Target, projection: Clocked, config: ProcessorConfig, push: bool
) -> Iterator[Processor[Any]]:
    conn = target.connect(False)
    processor = Processor(conn, target.store, config)
    if not push:
        processor._waiter = Waiter(
            target.store.config.events_table, None, config.get_logger(), push=False
        )
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    thread.start()
    try:
        yield processor
    finally:
        stop.set()
        thread.join()
        conn.close()


def append_paced(target: Target, count: int, pause: float) -> list[tuple[int, float]]:
    """Append ``count`` single-event transactions, each after a random pause
    of up to ``pause``; each position with when its commit was called."""
    appender = target.connect(False)
    rng = random.Random(7)
    committed: list[tuple[int, float]] = []
    try:
        for n in range(count):
            time.sleep(rng.uniform(0.002, pause))
            event = Event("Bench", "Account", f"acc-{n % 50}", "Deposited", b"{}")
            result = target.store.append(appender, ExpectedVersion.any(), [event])
            committing = time.monotonic()
            appender.commit()
            committed.append((result.global_positions[0], committing))
    finally:
        appender.close()
    return committed


def _append_in_child(target: Target, count: int, pause: float, results: Any) -> None:
    results.put(append_paced(target, count, pause))


def latencies(target: Target, count: int, push: bool, other_process: bool) -> list[float]:
    """Milliseconds from each commit to ``handle``. ``other_process``: the
    appends come from another process (PostgreSQL); else from a thread of
    this one, through the same store (the in-process wake-up)."""
    config = ProcessorConfig()
    projection = Clocked()
    with running(target, projection, config, push):
        time.sleep(0.2)
        if other_process:
            context = multiprocessing.get_context("fork")
            results = context.Queue()
            child = context.Process(
                target=_append_in_child, args=(target, count, config.poll_interval, results)
            )
            child.start()
            committed: list[tuple[int, float]] = results.get()
            child.join()
        else:
            committed = append_paced(target, count, config.poll_interval)
        return [(projection.wait_for(position) - at) * 1000 for position, at in committed]


def idle_rate(
    target: Target, count_statements: Callable[[Any], Callable[[], int]], poll: float
) -> float:
    """Statements per second an idle processor (with push) sends."""
    projection = Clocked()
    conn = target.connect(False)
    processor = Processor(conn, target.store, ProcessorConfig(poll_interval=poll))
    stop = threading.Event()
    settled = threading.Event()
    waiter, wait = processor._waiter, processor._waiter.wait

    def waiting(conn: Any, seconds: float, stop: threading.Event, label: str = "") -> bool:
        # Idle from the first wait that is not the one that starts to LISTEN
        # (a loaded machine may take more than a fixed pause to get there).
        wakes = waiter._wakes
        if wakes.listener is None or wakes.is_listening(conn):
            settled.set()
        return wait(conn, seconds, stop, label)

    waiter.wait = waiting  # type: ignore[method-assign]
    thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    thread.start()
    if not settled.wait(30):
        raise RuntimeError("the processor did not go idle within 30 s")
    seconds = ARGS.idle
    counted = count_statements(conn)
    time.sleep(seconds)
    sent = counted()
    stop.set()
    thread.join()
    conn.close()
    return float(sent / seconds)


def libpq_statements(conn: Any) -> Callable[[], int]:
    trace = tempfile.NamedTemporaryFile("w", suffix=".trace")  # noqa: SIM115 - closed by counted()
    conn.pgconn.trace(trace.fileno())

    def counted() -> int:
        conn.pgconn.untrace()
        with open(trace.name, encoding="latin-1") as lines:
            sent = sum(
                1
                for line in lines
                if "\tF\t" in line and ("\tBind\t" in line or "\tQuery\t" in line)
            )
        trace.close()
        return sent

    return counted


def sqlite_statements(conn: Any) -> Callable[[], int]:
    sent = [0]

    def traced(statement: str) -> None:
        sent[0] += 1

    conn.set_trace_callback(traced)

    def counted() -> int:
        conn.set_trace_callback(None)
        return sent[0]

    return counted


def report(name: str, figures: list[float]) -> tuple[float, float]:
    ordered = sorted(figures)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"  {name:<14} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   max {ordered[-1]:8.2f} ms")
    return p50, p99


def bench(
    database: str, build: Callable[[], Target], counter: Callable[[Any], Callable[[], int]]
) -> bool:
    try:
        target = build()
    except Unavailable as exc:
        print(f"{database}: unavailable ({exc})")
        return True
    ok = True
    apart = database == "postgres"
    try:
        source = "another process" if apart else "a thread of this process"
        print(f"{target.database}: P1 latency commit -> handle")
        print(f"  {ARGS.count} appends from {source}, default poll_interval (0.1 s)")
        _, p99 = report("with push", latencies(target, ARGS.count, True, apart))
        report("without push", latencies(target, ARGS.count, False, apart))
        if database == "postgres":
            ok = p99 <= TARGET_P99_MS
            print(f"  target p99 <= {TARGET_P99_MS:.0f} ms with push: {'pass' if ok else 'FAIL'}")
        print(f"  P2 idle cost ({ARGS.idle:.0f} s idle, with push):")
        for poll in (0.1, 5.0):
            rate = idle_rate(target, counter, poll)
            print(f"    poll_interval {poll:>4} s: {rate:6.2f} statements/s")
    finally:
        target.close()
    return ok


def main() -> int:
    import postgres_store
    import sqlite_store

    databases = {
        "postgres": (postgres_store.build, libpq_statements),
        "sqlite": (sqlite_store.build, sqlite_statements),
    }
    ok = True
    unavailable = 0
    for name in ARGS.db.split(","):
        build, counter = databases[name]
        try:
            ok = bench(name, build, counter) and ok
        except Unavailable:
            unavailable += 1
    if unavailable == len(ARGS.db.split(",")):
        return UNAVAILABLE_EXIT_CODE
    # A smoke run (--quick) checks that the figures come out, not their size:
    # timing on a shared test machine proves nothing.
    return 0 if ok or ARGS.quick else 1


parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--count", type=int, default=1000, help="appends per run (default 1000)")
parser.add_argument("--db", default="postgres,sqlite", help="postgres,sqlite (default both)")
parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured (default 5)")
parser.add_argument("--quick", action="store_true", help="a smoke run: 20 appends, 1 s idle")
ARGS = parser.parse_args([] if __name__ != "__main__" else None)
if ARGS.quick:
    ARGS.count, ARGS.idle = 20, 1.0

if __name__ == "__main__":
    sys.exit(main())
