"""Self-balancing workers: any number of processes share a projection's
partitions through leases in the database, with no other coordinator.

Run: ``python main.py`` and stop it with Ctrl+C; ``--quick`` runs the
scripted tour below and exits. PostgreSQL at $PUPSOURCING_DB (by default
``postgresql://postgres@127.0.0.1:5432/test``), in a schema of its own that
is dropped at the end.

The script starts worker processes of itself, ``main.py --worker``: the one
command line you would run on any number of machines (the same as
``pupsourcing projections run ... --total-partitions 6 --claim``). The tour:
two workers share the 6 partitions (3 each); a third joins and gets its fair
share (2 each); one is killed with SIGKILL and the other two take its
partitions over once its leases expire. Every deposit is counted once.
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
from collections import Counter
from typing import Any

import psycopg

from pupsourcing import Event, ExpectedVersion, PersistedEvent
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.projection import ClaimingRunner, ProcessorConfig
from pupsourcing.urls import Database, database

# PUPSOURCING_DB names the server (examples/README.md, "Settings"): PostgreSQL here.
URL = os.environ.get("PUPSOURCING_DB", "postgresql://postgres@127.0.0.1:5432/test")
PARTITIONS = 6


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


class AccountBalances:
    """Called from one thread per partition this process holds: it keeps no
    state of its own, every write goes through ``tx``."""

    name = "account_balances"

    def handle(self, event: PersistedEvent, tx: psycopg.Connection[Any]) -> None:
        cents = json.loads(event.payload)["cents"]
        tx.execute(
            "INSERT INTO balances VALUES (%s, %s, 1) ON CONFLICT (account_id) DO UPDATE "
            "SET cents = balances.cents + EXCLUDED.cents, deposits = balances.deposits + 1",
            (event.aggregate_id, cents),
        )


def worker(schema: str, lease_ttl: float) -> None:
    """What each machine runs: whatever share of the partitions it can claim."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    config = ProcessorConfig(total_partitions=PARTITIONS, poll_interval=0.1)
    runner = ClaimingRunner(in_schema(schema).connect, PostgresStore(), config, lease_ttl=lease_ttl)
    runner.run(AccountBalances(), stop=stop)
    print(f"worker {os.getpid()} stopped; its leases are released")


def deposit(store: PostgresStore, conn: psycopg.Connection[Any], accounts: int) -> None:
    for n in range(accounts):
        event = Event(
            "Bank", "Account", f"acc-{n}", "Deposited", json.dumps({"cents": 100}).encode()
        )
        store.append(conn, ExpectedVersion.any(), [event])
    conn.commit()


def shares(store: PostgresStore, conn: psycopg.Connection[Any]) -> list[int]:
    """How many partitions each live process holds, largest first."""
    leases = store.list_leases(conn, AccountBalances.name)
    conn.commit()
    live = Counter(lease.owner for lease in leases if lease.partition_key >= 0 and lease.live)
    return sorted(live.values(), reverse=True)


def wait_until(what: str, condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting until {what}")
        time.sleep(0.1)
    print(f"  {what}")


def coordinator(quick: bool) -> None:
    schema = f"example_{uuid.uuid4().hex[:8]}"
    lease_ttl = 1.0 if quick else 10.0
    command = [sys.executable, __file__, "--worker", "--schema", schema]
    command += ["--lease-ttl", str(lease_ttl)]
    workers: list[subprocess.Popen[bytes]] = []
    with autocommit(server().connect()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            conn = in_schema(schema).connect()
            store = PostgresStore()
            store.create_schema(conn)
            conn.execute(
                "CREATE TABLE balances (account_id TEXT PRIMARY KEY, cents BIGINT, deposits INT)"
            )
            conn.commit()

            def handled() -> int:
                row = conn.execute("SELECT COALESCE(sum(deposits), 0) FROM balances").fetchone()
                conn.commit()
                return int(row[0]) if row else 0

            deposit(store, conn, 60)
            workers += [subprocess.Popen(command) for _ in range(2)]
            wait_until("two workers hold 3 partitions each", lambda: shares(store, conn) == [3, 3])
            workers.append(subprocess.Popen(command))
            wait_until("a third joins: 2 partitions each", lambda: shares(store, conn) == [2, 2, 2])
            deposit(store, conn, 60)
            if not quick:
                stop = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                print("3 workers running; start more with the command below, Ctrl+C to stop")
                print("  " + " ".join(command))
                while not stop.wait(1.0):
                    deposit(store, conn, 6)
            workers[0].kill()  # SIGKILL: no goodbye, its leases just expire
            workers[0].wait()
            print(f"  killed worker {workers[0].pid}")
            wait_until("the other two took over: 3 each", lambda: shares(store, conn) == [3, 3])
            deposit(store, conn, 60)
            total = 180 if quick else None
            if total is not None:
                wait_until(f"all {total} deposits counted", lambda: handled() == total)
            for process in workers[1:]:
                process.terminate()
            for process in workers[1:]:
                process.wait()
            failed = [p.args for p in workers[1:] if p.returncode != 0]
            assert not failed, failed
            accounts, cents, deposits = conn.execute(
                "SELECT count(*), sum(cents), sum(deposits) FROM balances"
            ).fetchone() or (0, 0, 0)
            print(f"{accounts} accounts, {deposits} deposits, {cents} cents")
            if quick:
                assert (accounts, deposits, cents) == (60, 180, 18000)
            conn.close()
        finally:
            for process in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="run the tour and exit")
    parser.add_argument("--worker", action="store_true", help="run as a worker")
    parser.add_argument("--schema", help="the schema to work in (worker mode)")
    parser.add_argument("--lease-ttl", type=float, default=10.0, help="(worker mode)")
    args = parser.parse_args()
    if args.worker:
        worker(args.schema, args.lease_ttl)
    else:
        coordinator(args.quick)


if __name__ == "__main__":
    main()
