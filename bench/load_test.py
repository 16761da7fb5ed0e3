"""Load test: concurrent writers on PostgreSQL with a partitioned projection following.

    python bench/load_test.py [--quick] [--seconds 60] [--writers 16] [--partitions 4]

``--writers`` threads (spread over ``--processes`` processes, so the writers
are not serialised on one interpreter) append single events with
``ExpectedVersion.any()`` to random aggregates of a shared pool, each in its
own transaction, for ``--seconds``. Meanwhile ``--partitions`` processors (one
process each, hash-partitioned) project every event into a read-model table
through ``tx``, stamping the time they handled it.

Reported: appends/s, append latency (append + commit) p50/p99/max, and
projection lag p50/p99/max (time from the writer's commit returning to the
handler seeing the event; slightly negative values, a handler that saw the
event before the writer heard back from its commit, count as 0).

Verified at the end, after the projection caught up: the events table holds
exactly the appends the writers saw committed (none lost, none extra), each
aggregate's versions run 1..n, every event is in the read model exactly once
(its primary key refuses a second application) and in the partition its
aggregate hashes to. Any failure exits non-zero.

Uses its own schema (dropped at the end) on the server named by
``PUPSOURCING_BENCH_PG`` (default: the test server on 127.0.0.1:5432).
``--quick`` runs for a few seconds (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, make_events
from postgres_store import DSN

from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.projection import Processor, ProcessorConfig

AGGREGATES = 2000
PROJECTION = "load_read_model"


@dataclass
class WriterReport:
    appends: list[tuple[int, float, float]] = field(default_factory=list)
    """(global_position, commit wall time, latency in seconds) per committed append."""
    errors: list[str] = field(default_factory=list)


def _writer_thread(dsn: str, seed: int, start_at: float, stop_at: float, out: WriterReport) -> None:
    import psycopg

    store = PostgresStore()
    rng = random.Random(seed)
    conn = psycopg.connect(dsn)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        n = 0
        # At least one append: on a loaded machine a writer may only be ready
        # after stop_at (children import for longer than the 2 s allowed).
        while n == 0 or time.time() < stop_at:
            aggregate = f"acc-{rng.randrange(AGGREGATES)}"
            batch = make_events(aggregate, 1, n)
            n += 1
            started = time.perf_counter()
            try:
                result = store.append(conn, ExpectedVersion.any(), batch)
                conn.commit()
            except Exception as exc:  # counted and reported; the run fails
                conn.rollback()
                out.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latency = time.perf_counter() - started
            out.appends.append((result.global_positions[0], time.time(), latency))
    finally:
        conn.close()


def _writer_process(
    dsn: str, seeds: list[int], start_at: float, stop_at: float, queue: Any
) -> None:
    reports = [WriterReport() for _ in seeds]
    threads = [
        threading.Thread(target=_writer_thread, args=(dsn, seed, start_at, stop_at, report))
        for seed, report in zip(seeds, reports, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = WriterReport()
    for report in reports:
        merged.appends += report.appends
        merged.errors += report.errors
    queue.put(merged)


class Stamping:
    """Writes (position, partition, handled-at) through ``tx``; the primary key
    refuses a second application of an event."""

    name = PROJECTION

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        tx.execute(
            "INSERT INTO projected (position, partition_key, handled_at) VALUES (%s, %s, %s)",
            (event.global_position, self.partition, time.time()),
        )


def _follower(
    dsn: str, key: int, partitions: int, poll_interval: float, stop: Any, failed: Any
) -> None:
    """A partition worker process: runs the projection until ``stop`` is set."""
    import psycopg

    config = ProcessorConfig(
        batch_size=100, partition_key=key, total_partitions=partitions, poll_interval=poll_interval
    )
    try:
        with Processor(lambda: psycopg.connect(dsn), PostgresStore(), config) as processor:
            processor.run(Stamping(key), stop=stop)
    except BaseException as exc:
        failed.put(f"partition {key}: {exc!r}")
        raise


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def run(args: argparse.Namespace) -> int:
    import psycopg

    try:
        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    schema = f"load_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{DSN} options='-c search_path={schema}'"
    try:
        return measure(args, dsn, admin)
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def measure(args: argparse.Namespace, dsn: str, admin: Any) -> int:
    import psycopg

    store = PostgresStore()
    with psycopg.connect(dsn, autocommit=True) as conn:
        store.create_schema(conn)
        conn.execute(
            "CREATE TABLE projected (position BIGINT PRIMARY KEY, partition_key INT NOT NULL, "
            "handled_at DOUBLE PRECISION NOT NULL)"
        )
    server = admin.execute("SHOW server_version").fetchone()[0]

    # The projection follows from the start: one process per partition, as
    # partitioned workers are deployed.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    failed = context.Queue()
    followers = [
        context.Process(
            target=_follower, args=(dsn, key, args.partitions, args.poll_interval, stop, failed)
        )
        for key in range(args.partitions)
    ]
    for follower in followers:
        follower.start()
    failures: list[str] = []

    # Writers, spread over processes.
    queue = context.Queue()
    processes = max(1, min(args.processes, args.writers))
    seeds = [list(range(p, args.writers, processes)) for p in range(processes)]
    start_at = time.time() + 2.0  # after the children imported everything
    stop_at = start_at + args.seconds
    workers = [
        context.Process(target=_writer_process, args=(dsn, s, start_at, stop_at, queue))
        for s in seeds
    ]
    for worker in workers:
        worker.start()
    reports: list[WriterReport] = [queue.get(timeout=args.seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(30)
    writing = stop_at - start_at

    appends = [a for report in reports for a in report.appends]
    errors = [e for report in reports for e in report.errors]
    high = max((position for position, _, _ in appends), default=0)

    # Wait until every partition's checkpoint passed the last committed event.
    writers_done = time.time()
    caught_up_by = writers_done + 120
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.time() < caught_up_by and failed.empty():
            row = conn.execute(
                "SELECT count(*) FROM projection_checkpoints "
                "WHERE projection_name LIKE %s AND last_global_position >= %s",
                (f"{PROJECTION}_p%", high),
            ).fetchone()
            if row is not None and row[0] == args.partitions:
                break
            time.sleep(0.01)
        drained = time.time() - writers_done
        stop.set()
        for follower in followers:
            follower.join(30)
        while not failed.empty():
            failures.append(failed.get())
        failures += [
            f"partition {key} exited with {follower.exitcode}"
            for key, follower in enumerate(followers)
            if follower.exitcode != 0
        ]

        problems = verify(conn, appends, args.partitions, failures, errors)
        lags = lag_values(conn, appends)

    latencies = [latency for _, _, latency in appends]
    ms = 1000.0
    print(
        f"load test: PostgreSQL {server}, {args.writers} writers ({processes} processes) for "
        f"{writing:.0f} s, projection in {args.partitions} partitions "
        f"(batch 100, poll {args.poll_interval} s)"
    )
    print(f"appends           {len(appends):>10,}   {len(appends) / writing:>10,.1f} appends/s")
    slowest = max(latencies, default=0.0)
    print(
        f"append latency    p50 {percentile(latencies, 50) * ms:8.2f} ms   "
        f"p99 {percentile(latencies, 99) * ms:8.2f} ms   max {slowest * ms:8.2f} ms"
    )
    print(
        f"projection lag    p50 {percentile(lags, 50) * ms:8.2f} ms   "
        f"p99 {percentile(lags, 99) * ms:8.2f} ms   max {max(lags, default=0) * ms:8.2f} ms"
    )
    print(f"projection caught up {drained:.2f} s after the writers stopped")
    if errors:
        print(f"append errors     {len(errors)} (first: {errors[0]})")
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    print(f"exactly once: ok ({len(appends):,} committed events, each projected once)")
    if latencies:
        print(f"(mean append latency {statistics.fmean(latencies) * ms:.2f} ms)")
    return 0


def lag_values(conn: Any, appends: list[tuple[int, float, float]]) -> list[float]:
    committed = {position: at for position, at, _ in appends}
    return [
        max(0.0, float(handled) - committed[int(position)])
        for position, handled in conn.execute("SELECT position, handled_at FROM projected")
        if int(position) in committed
    ]


def differences(name: str, found: list[int], other: str, expected: list[int]) -> list[str]:
    """What is wrong with the positions ``found`` where ``expected`` were due."""
    if found == expected:
        return []
    missing, extra = len(set(expected) - set(found)), len(set(found) - set(expected))
    return [
        f"{name} holds {len(found)} events ({len(set(found))} distinct), {other} "
        f"{len(expected)}: {missing} missing, {extra} extra"
    ]


def verify(
    conn: Any,
    appends: list[tuple[int, float, float]],
    partitions: int,
    failures: list[str],
    errors: list[str],
) -> list[str]:
    problems = [f"a processor failed: {failure}" for failure in failures]
    if errors:
        problems.append(f"{len(errors)} appends failed")
    if not appends:
        problems.append("no append committed")
    committed = sorted(position for position, _, _ in appends)
    if len(set(committed)) != len(committed):
        problems.append("two appends reported the same position")
    stored = [int(row[0]) for row in conn.execute("SELECT global_position FROM events ORDER BY 1")]
    problems += differences("the events table", stored, "the writers committed", committed)
    gaps = conn.execute(
        "SELECT count(*) FROM (SELECT aggregate_id, count(*) AS n, max(aggregate_version) AS v "
        "FROM events GROUP BY aggregate_id) s "
        "JOIN aggregate_heads h USING (aggregate_id) WHERE s.n <> s.v OR h.aggregate_version <> s.v"
    ).fetchone()[0]
    if gaps:
        problems.append(f"{gaps} aggregates whose versions are not 1..n or disagree with the head")
    projected = [int(row[0]) for row in conn.execute("SELECT position FROM projected ORDER BY 1")]
    problems += differences("the read model", projected, "the store", stored)
    misplaced = conn.execute(
        "SELECT count(*) FROM projected p JOIN events e ON e.global_position = p.position "
        "WHERE e.partition_hash %% %s <> p.partition_key",
        (partitions,),
    ).fetchone()[0]
    if misplaced:
        problems.append(f"{misplaced} events projected by the wrong partition")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--processes", type=int, default=4, help="writer processes")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
