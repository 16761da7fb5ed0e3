"""Where a PostgreSQL catch-up batch spends its time: W3's bare paging, then
the statements a processor sends per batch, added one at a time, then the
processor itself, all in one run on the same events.

    bare       W3's baseline: the bare driver paging through the events
               (autocommit, one SELECT per page)
    +tx        the same reads inside a transaction that commits after each
               page and opens the next in the same round trip (``COMMIT;
               BEGIN``), as a processor's batches do
    +cas       each page read by the processor's own statement: the
               checkpoint's compare-and-set with the read of the next page,
               all in one transaction that never commits. No design that
               moves the checkpoint per batch in SQL can go faster: this is
               one round trip per batch and no commit
    +cas+tx    the processor's statements as it sends them: the
               compare-and-set with the read, then ``COMMIT; BEGIN``
    processor  W3 itself: ``Processor.catch_up`` with a no-op projection

Each line is events/s (best of ``--rounds``, the rounds interleaved) and its
ratio to ``bare``; W3's target at batch 100 is 0.7x. The statements are sent
through the same cursors and helpers as the store's, without decoding.

    python bench/catchup_floor.py [--quick] [--events N] [--batch 100] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Target, Unavailable
from projections import catch_up, load, page_through, raw_paging_sql

from pupsourcing.projection import ProcessorConfig

ROUNDS = 4
CHECKPOINT = "catchup_floor"


def _statement(target: Target, batch: int, position: int, expected: int) -> tuple[str, list[Any]]:
    """The processor's compare-and-set of ``CHECKPOINT`` from ``expected``
    to ``position`` with the read of the ``batch`` events after it."""
    dialect = target.store.dialect
    read = dialect.fetch_statement(position, None, batch, (), (), None)
    plan = dialect.advance_and_read(CHECKPOINT, expected, position, read)
    statement = next(plan)
    plan.close()
    return statement.sql, list(statement.params)


def _bare(target: Target, batch: int) -> int:
    conn = target.connect(True)
    try:
        return page_through(conn, raw_paging_sql(target), batch)
    finally:
        conn.close()


def _paged_in_transactions(target: Target, batch: int) -> int:
    from pupsourcing.adapters.postgres._driver import commit_and_begin
    from pupsourcing.adapters.postgres._reads import ReadCursor

    conn = target.connect(False)
    try:
        sql, rows, position = raw_paging_sql(target), 0, 0
        while True:
            page = ReadCursor(conn).read(sql, (position, batch)).fetchall()
            if not page:
                conn.rollback()
                return rows
            rows += len(page)
            position = page[-1][0]
            commit_and_begin(conn)
    finally:
        conn.close()


def _compare_and_set(target: Target, batch: int, *, commit: bool) -> int:
    from pupsourcing.adapters.postgres._driver import commit_and_begin
    from pupsourcing.adapters.postgres._reads import ReadCursor

    conn = target.connect(False)
    try:
        conn.execute(
            "INSERT INTO projection_checkpoints (projection_name, last_global_position) "
            "VALUES (%s, 0) ON CONFLICT (projection_name) DO UPDATE SET last_global_position = 0",
            (CHECKPOINT,),
        )
        conn.commit()
        rows, position, expected = 0, 0, 0
        while True:
            sql, params = _statement(target, batch, position, expected)
            page = ReadCursor(conn).read(sql, params).fetchall()
            if not page[0][0]:
                raise AssertionError("the checkpoint did not move")
            if page[0][1] is None:
                conn.rollback()
                return rows
            rows += len(page)
            expected, position = position, page[-1][1]
            if commit:
                commit_and_begin(conn)
    finally:
        conn.close()


def _processor(target: Target, batch: int) -> int:
    handled, _ = catch_up(target, f"floor_{time.monotonic_ns()}", ProcessorConfig(batch_size=batch))
    return handled


WAYS: dict[str, Callable[[Target, int], int]] = {
    "bare": _bare,
    "+tx": _paged_in_transactions,
    "+cas": lambda target, batch: _compare_and_set(target, batch, commit=False),
    "+cas+tx": lambda target, batch: _compare_and_set(target, batch, commit=True),
    "processor": _processor,
}


def measure(target: Target, events: int, batch: int, rounds: int) -> dict[str, float]:
    """Best events/s of each way, over ``rounds`` interleaved rounds."""
    best = dict.fromkeys(WAYS, 0.0)
    for _ in range(rounds):
        for name, way in WAYS.items():
            start = time.perf_counter()
            rows = way(target, batch)
            elapsed = time.perf_counter() - start
            if rows != events:
                raise AssertionError(f"{name} read {rows} of {events} events")
            best[name] = max(best[name], rows / elapsed)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 events (smoke test)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    events = 2000 if args.quick else args.events - args.events % 100
    import postgres_store

    try:
        target = postgres_store.build()
    except Unavailable as exc:
        print(f"postgres: database unavailable: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT_CODE
    try:
        load(target, events)
        best = measure(target, events, args.batch, 1 if args.quick else args.rounds)
    finally:
        target.close()
    print(f"PostgreSQL catch-up of {events:,} events at batch {args.batch}: {target.database}")
    for name, rate in best.items():
        print(f"{name:10} {rate:12,.0f} events/s  {rate / best['bare']:5.2f}x bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
