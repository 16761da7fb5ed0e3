"""Asyncio against blocking: append throughput of concurrent writers on PostgreSQL.

Workload W2c of ``common.py``: K writers (8 by default) x T single-event
transactions, each writer on its own connection and its own aggregates. It
runs four ways in one run, on the same schema, alternating the order:

- PostgresStore in K threads, and AsyncPostgresStore in K tasks on one event
  loop (the store under test, both APIs);
- the raw baseline of ``postgres_store.py`` (the same statement built by
  hand, no event objects) on psycopg ``Connection`` in K threads and on
  ``AsyncConnection`` in K tasks: what the driver alone does with each I/O
  model on this machine.

It prints events/s for each, async/sync for the store and for the raw
driver, and store/raw for each API. The best of ``--rounds`` runs of each
is kept. Uses its own schema (dropped at the end), like ``postgres_store.py``.

    python bench/async_vs_sync.py [--quick] [--rounds N] [--writers K]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from common import (
    FULL,
    QUICK,
    UNAVAILABLE_EXIT_CODE,
    WORKLOADS,
    Scale,
    Side,
    Target,
    Unavailable,
    count_events,
    store_side,
)
from postgres_store import (
    describe,
    private_schema,
    raw_append,
    raw_append_statement,
    raw_read_stream,
    reset,
)

from pupsourcing import Event, ExpectedVersion
from pupsourcing.adapters.postgres import PostgresStore
from pupsourcing.aio import AsyncPostgresStore

W2C = next(workload for workload in WORKLOADS if workload.key == "W2c")
AsyncAppend = Callable[[Any, Sequence[Event]], Awaitable[object]]


def async_store_append(store: AsyncPostgresStore) -> AsyncAppend:
    async def append(conn: Any, events: Sequence[Event]) -> object:
        return await store.append(conn, ExpectedVersion.any(), events)

    return append


async def raw_append_async(conn: Any, events: Sequence[Event]) -> object:
    sql, params = raw_append_statement(events)
    cursor = await conn.execute(sql, params)
    return await cursor.fetchall()


def run_tasks(dsn: str, append: AsyncAppend, work: list[list[list[Event]]]) -> float:
    """W2c with one task per writer on one event loop; seconds taken."""
    import psycopg

    async def go() -> float:
        connections = [await psycopg.AsyncConnection.connect(dsn) for _ in work]

        async def writer(conn: Any, batches: list[list[Event]]) -> None:
            for batch in batches:
                await append(conn, batch)
                await conn.commit()

        try:
            start = time.perf_counter()
            await asyncio.gather(
                *(writer(conn, batches) for conn, batches in zip(connections, work, strict=True))
            )
            return time.perf_counter() - start
        finally:
            for conn in connections:
                await conn.close()

    return asyncio.run(go())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    parser.add_argument("--rounds", type=int, help="runs of each of the four (best is kept)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers (default 8)")
    args = parser.parse_args(argv)
    scale: Scale = QUICK if args.quick else FULL
    scale = replace(scale, w2c_threads=args.writers, rounds=args.rounds or scale.rounds)
    try:
        schema = private_schema()
    except Unavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    import psycopg

    target = Target(
        database=describe(schema.admin),
        connect=lambda autocommit: psycopg.connect(schema.dsn, autocommit=autocommit),
        store=PostgresStore(),
        raw=Side(raw_append, raw_read_stream),
        reset=reset,
    )
    threads: dict[str, Side] = {"store": store_side(target.store), "raw": target.raw}
    tasks: dict[str, AsyncAppend] = {
        "store": async_store_append(AsyncPostgresStore()),
        "raw": raw_append_async,
    }
    runs: list[tuple[str, str, Callable[[list[list[list[Event]]]], float]]] = [
        *(
            (name, "sync", lambda work, s=side: W2C.run(target, s, scale, work))
            for name, side in threads.items()
        ),
        *(
            (name, "async", lambda work, a=append: run_tasks(schema.dsn, a, work))
            for name, append in tasks.items()
        ),
    ]
    best: dict[tuple[str, str], float] = {}
    events = scale.w2c_threads * scale.w2c_per_thread
    try:
        for round_ in range(scale.rounds):
            for name, api, run in runs if round_ % 2 == 0 else runs[::-1]:
                with target.connect(True) as conn:
                    reset(conn)
                work = W2C.prepare(target, scale)
                rate = events / run(work)
                with target.connect(True) as conn:
                    stored = count_events(target, conn)
                if stored != events:
                    raise AssertionError(f"{name} {api}: {stored} events stored, not {events}")
                best[name, api] = max(best.get((name, api), 0.0), rate)
    finally:
        schema.close()

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    k, t = scale.w2c_threads, scale.w2c_per_thread
    print(
        f"{target.database}: asyncio vs blocking, {k} concurrent writer{'s' if k != 1 else ''} "
        f"x {t:,} "
        f"single-event transactions (best of {scale.rounds}; Python {platform.python_version()})"
    )
    print()
    print(
        f"{'':14} {f'sync ({k} threads)':>18} {f'async ({k} tasks)':>18} {'':8} {'async/sync':>10}"
    )
    for name, label in (("store", "store"), ("raw", "raw psycopg")):
        sync, async_ = best[name, "sync"], best[name, "async"]
        print(
            f"{label:14} {sync:>18,.0f} {async_:>18,.0f} {'events/s':8} {ratio(async_, sync):>10}"
        )
    print(
        f"{'store/raw':14} {ratio(best['store', 'sync'], best['raw', 'sync']):>18} "
        f"{ratio(best['store', 'async'], best['raw', 'async']):>18}"
    )
    print()
    print(
        "- each writer: its own connection and aggregates, one append + commit per "
        "transaction; threads share the GIL, tasks share one event loop (asyncio's default)"
    )
    print(
        "- raw psycopg: the statement postgres_store.py's raw baseline sends (head upsert + "
        "INSERT ... RETURNING, built by hand, no event objects), on Connection / AsyncConnection"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
