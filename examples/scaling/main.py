"""Scale a projection from 1 to 2 to 4 processes while events keep arriving.

Run: ``python main.py`` (``--quick`` for short phases). PostgreSQL at
$PUPSOURCING_DB (by default ``postgresql://postgres@127.0.0.1:5432/test``),
in a schema of its own that is dropped at the end.

The projection has 4 partitions, fixed from the start. Scaling out never
changes that number; it moves partitions between processes:

    phase 1: one process runs partitions 0, 1, 2, 3
    phase 2: two processes run 0, 1 and 2, 3
    phase 3: four processes run one partition each

Each move stops a process gracefully (SIGTERM: its batch finishes) and starts
the next ones, which continue from the partitions' checkpoints. Meanwhile a
writer appends events. At the end every event has been handled exactly once,
and every account's events in order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.projection import Processor, ProcessorConfig
from pupsourcing.runner import ProjectionRunner, Runner
from pupsourcing.urls import Database, database

# PUPSOURCING_DB names the server (examples/README.md, "Settings"): PostgreSQL here.
URL = os.environ.get("PUPSOURCING_DB", "postgresql://postgres@127.0.0.1:5432/test")


def server() -> Database:
    """The database ``URL`` names; the example works in a schema of its own there."""
    db = database(URL)
    if db.url.adapter != "postgres":
        sys.exit(f"this example runs on PostgreSQL, but PUPSOURCING_DB names {db.url}")
    return db


def in_schema(schema: str) -> Database:
    """The same database with ``schema`` as the search path (a libpq option)."""
    return database(f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{schema}")


def autocommit(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.autocommit = True
    return conn


TOTAL_PARTITIONS = 4
PHASES = [[[0, 1, 2, 3]], [[0, 1], [2, 3]], [[0], [1], [2], [3]]]


class Statements:
    """Keeps each account's last version; refuses to apply an event out of order."""

    name = "statements"

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        applied = tx.execute(
            "UPDATE accounts SET version = %s WHERE account_id = %s AND version = %s",
            (event.aggregate_version, event.aggregate_id, event.aggregate_version - 1),
        ).rowcount
        if not applied:
            tx.execute("INSERT INTO accounts VALUES (%s, 1)", (event.aggregate_id,))
        tx.execute("INSERT INTO handled VALUES (%s, %s)", (event.global_position, os.getpid()))


def worker(schema: str, partitions: list[int]) -> None:
    """One process running some partitions, one thread each."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)  # the coordinator waits for this before it signals us
    store = PostgresStore()
    connect = in_schema(schema).connect
    pairs = [
        ProjectionRunner(
            Statements(),
            Processor(
                connect,
                store,
                ProcessorConfig(partition_key=key, total_partitions=TOTAL_PARTITIONS),
            ),
        )
        for key in partitions
    ]
    try:
        Runner().run(pairs, stop=stop)
    finally:
        for pair in pairs:
            pair.processor.close()


def coordinator(seconds_per_phase: float) -> None:
    schema = f"example_{uuid.uuid4().hex[:8]}"
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            run_phases(schema, seconds_per_phase)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def run_phases(schema: str, seconds_per_phase: float) -> None:
    conn = autocommit(in_schema(schema).connect())
    store = PostgresStore()
    store.create_schema(conn)
    conn.execute("CREATE TABLE accounts (account_id TEXT PRIMARY KEY, version BIGINT NOT NULL)")
    conn.execute("CREATE TABLE handled (position BIGINT PRIMARY KEY, pid INT NOT NULL)")

    writing = threading.Event()
    writing.set()

    def write() -> None:  # the rest of the system, appending all along
        writer = in_schema(schema).connect()
        n = 0
        while writing.is_set():
            event = Event(
                "Bank", "Account", f"acc-{n % 20}", "Booked", json.dumps({"n": n}).encode()
            )
            store.append(writer, ExpectedVersion.any(), [event])
            writer.commit()
            n += 1
            time.sleep(0.002)
        writer.close()

    writer_thread = threading.Thread(target=write)
    writer_thread.start()
    processes: list[subprocess.Popen[bytes]] = []
    for phase, assignment in enumerate(PHASES, 1):
        for process in processes:  # stop the previous phase's processes gracefully
            process.terminate()
        for process in processes:
            assert process.wait() == 0, process.args
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--schema",
                    schema,
                    "--worker",
                    ",".join(map(str, keys)),
                ],
                stdout=subprocess.PIPE,
            )
            for keys in assignment
        ]
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n"
        print(f"phase {phase}: {len(processes)} process(es) running partitions {assignment}")
        time.sleep(seconds_per_phase)

    writing.clear()
    writer_thread.join()
    last = conn.execute("SELECT max(global_position) FROM events").fetchone()[0]
    names = [f"{Statements.name}_p{key}" for key in range(TOTAL_PARTITIONS)]
    while any(store.get_checkpoint(conn, name) < last for name in names):
        time.sleep(0.05)
    for process in processes:
        process.terminate()
    for process in processes:
        assert process.wait() == 0, process.args

    handled, distinct, pids = conn.execute(
        "SELECT count(*), count(DISTINCT position), count(DISTINCT pid) FROM handled"
    ).fetchone()
    versions = conn.execute("SELECT sum(version) FROM accounts").fetchone()[0]
    print(f"{last} events appended; {handled} handled ({distinct} distinct) by {pids} processes")
    assert handled == distinct == last == versions, (handled, distinct, last, versions)
    print("every event handled exactly once, every account's events in order")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases")
    parser.add_argument(
        "--worker", metavar="KEYS", help="run these partitions, e.g. 0,1 (worker mode)"
    )
    parser.add_argument("--schema", help="the schema to work in (worker mode)")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.schema, [int(key) for key in args.worker.split(",")])
    else:
        coordinator(0.7 if args.quick else 4.0)


if __name__ == "__main__":
    main()
