"""Cost does not grow with the store.

For each database, on two stores side by side, one holding SMALL events and
one LARGE events (filler rows generated on the server, as another service's
history would be):

    S2   single-event append (W2): store.append + commit, one connection,
         events with the default random ids (uuid4)
    S2t  the same with time-ordered ids (pupsourcing.uuid7)
    S4   full read of a 1,000-event stream (W4)
    SM   peak memory (RSS) of a process catching up on the whole store with a
         no-op projection, batch 1,000

The report gives each figure on the small and the large store and their
ratio: appends and reads must stay within 20% (ratio >= 0.8); catch-up memory
on the large store must stay within 50 MB of the small one.

Both stores are loaded and settled first (``settle``: statistics, and a
checkpoint on PostgreSQL, so that no background checkpoint lands inside a
measurement). Then each figure is measured on the two in alternation, round
by round, best round of each: single-event appends wait for the disk on every
commit, and this shared machine's disk latency drifts by 2x within a minute,
which measuring one store a minute after the other took for growth.

After a checkpoint, the first change to each page of PostgreSQL's unique
``event_id`` index writes a full-page image to the WAL, and on a large index
a random id lands on a page of its own (measured: 5 to 7 kB of WAL per append
on 1,000,000 events against 1.4 kB on 10,000). Time-ordered ids all land on
the index's last page: S2t shows the difference.

With ``--big`` (PostgreSQL only, minutes rather than seconds, so not part of
``run_all.py``'s default run): S2, S2t and S4 on 10,000 against 10,000,000 events,
the large store loaded with ``COPY`` from this process (psycopg's
``cursor.copy``), as a bulk import of another store's history would be.

    python bench/scale.py [--quick] [--db postgres,mysql,sqlite] [--large N]
    python bench/scale.py --big [--large N] [--output FILE.json]

``--output`` also writes the figures, the machine and the database version
as JSON: ``run_all.py`` shows the file ``scale-10m.json`` next to the page as
the page's 10M section (``run_all.py --big`` writes it in the same run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from common import UNAVAILABLE_EXIT_CODE, Target, Unavailable, machine, make_events, settle
from projections import LOCATIONS, Noop, builders, location_of

from pupsourcing import ExpectedVersion, uuid7
from pupsourcing.projection import Processor, ProcessorConfig

SMALL = 10_000
LARGE = 1_000_000
BIG = 10_000_000
STREAM = 1_000


@dataclass
class ScaleResult:
    database: str
    metric: str
    small: float
    large: float
    unit: str

    @property
    def ratio(self) -> float:
        return self.large / self.small if self.small else float("nan")


# -- filling the store on the server ------------------------------------------

FILL_CHUNK = 100_000


def fill_postgres(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, event_version, payload, metadata, created_at) "
        "SELECT 'Bench', 'Filler', 'filler-' || (g / 10), g %% 10 + 1, gen_random_uuid(), "
        "'Filled', 1, convert_to(repeat('x', 200), 'UTF8'), '{}'::jsonb, now() "
        "FROM generate_series(%s::bigint, %s::bigint) AS g",
        (first, last),
    )


_DIGITS = (
    "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {i}" for i in range(1, 10)) + ")"
)


def fill_mysql(conn: Any, first: int, last: int) -> None:
    numbers = (
        f"SELECT %s + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS g "
        f"FROM {_DIGITS} a, {_DIGITS} b, {_DIGITS} c, {_DIGITS} e, {_DIGITS} f"
    )
    cursor = conn.cursor()
    cursor.execute(
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, event_version, payload, metadata, created_at) "
        "SELECT 'Bench', 'Filler', CONCAT('filler-', g DIV 10), g %% 10 + 1, "
        "UNHEX(REPLACE(UUID(), '-', '')), 'Filled', 1, REPEAT('x', 200), '{}', "
        f"CURRENT_TIMESTAMP(6) FROM ({numbers}) AS n WHERE g <= %s",
        (first, last),
    )


def fill_sqlite(conn: Any, first: int, last: int) -> None:
    conn.execute(
        "WITH RECURSIVE seq(g) AS (SELECT ? UNION ALL SELECT g + 1 FROM seq WHERE g < ?) "
        "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, "
        "event_id, event_type, event_version, payload, metadata, created_at) "
        "SELECT 'Bench', 'Filler', 'filler-' || (g / 10), g % 10 + 1, "
        "printf('%08x-0000-4000-8000-%012x', g, g), 'Filled', 1, "
        "CAST(printf('%.200c', 'x') AS BLOB), '{}', "
        "strftime('%Y-%m-%d %H:%M:%f', 'now') FROM seq",
        (first, last),
    )


FILLERS: dict[str, Callable[[Any, int, int], None]] = {
    "postgres": fill_postgres,
    "mysql": fill_mysql,
    "sqlite": fill_sqlite,
}


COPY_COLUMNS = (
    "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, "
    "event_type, event_version, payload, metadata, created_at"
)
COPY_LINES = 10_000
"""Rows formatted per write to the COPY stream."""


def copy_postgres(conn: Any, first: int, last: int) -> None:
    """The rows of :func:`fill_postgres`, sent with ``COPY ... FROM STDIN``
    (text format, formatted here: random ids, a 200-byte payload)."""
    bits = random.getrandbits
    payload = "\\\\x" + "78" * 200  # bytea hex input, its backslash escaped for COPY
    created = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
    tail = f"\tFilled\t1\t{payload}\t{{}}\t{created}\n"
    with conn.cursor().copy(f"COPY events ({COPY_COLUMNS}) FROM STDIN") as copy:
        for start in range(first, last + 1, COPY_LINES):
            copy.write(
                "".join(
                    f"Bench\tFiller\tfiller-{g // 10}\t{g % 10 + 1}\t{bits(128):032x}{tail}"
                    for g in range(start, min(start + COPY_LINES, last + 1))
                )
            )


def fill(database: str, target: Target, count: int, start: int, copy: bool = False) -> None:
    """Add ``count`` filler events (sequence numbers from ``start``), generated
    on the server, or with ``copy`` sent by COPY (PostgreSQL)."""
    filler = copy_postgres if copy else FILLERS[database]
    chunk = FILL_CHUNK * 10 if copy else FILL_CHUNK
    conn = target.connect(False)
    try:
        for first in range(start, start + count, chunk):
            last = min(first + chunk, start + count) - 1
            filler(conn, first, last)
            conn.commit()
    finally:
        conn.close()
    settle(database, target)


def setting(target: Target, name: str) -> str:
    """A PostgreSQL server setting (the event_id index outgrows a small
    ``shared_buffers`` long before the table matters)."""
    conn = target.connect(True)
    try:
        return str(conn.execute(f"SHOW {name}").fetchone()[0])
    finally:
        conn.close()


def count(target: Target) -> int:
    conn = target.connect(True)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM events")
        return int(cursor.fetchone()[0])
    finally:
        conn.close()


# -- measurements -------------------------------------------------------------


def appends_per_second(
    target: Target, transactions: int, tag: str, time_ordered: bool = False
) -> float:
    batches = [make_events(f"s2-{tag}-{i % 50}", 1, i) for i in range(transactions)]
    if time_ordered:
        batches = [[replace(e, event_id=uuid7()) for e in batch] for batch in batches]
    conn = target.connect(False)
    try:
        start = time.perf_counter()
        for batch in batches:
            target.store.append(conn, ExpectedVersion.any(), batch)
            conn.commit()
        return transactions / (time.perf_counter() - start)
    finally:
        conn.close()


def reads_per_second(target: Target, reads: int, aggregate_id: str) -> float:
    conn = target.connect(True)
    try:
        start = time.perf_counter()
        for _ in range(reads):
            stream = target.store.read_aggregate_stream(conn, "Bench", "Account", aggregate_id)
            if len(stream) != STREAM:
                raise AssertionError(f"read {len(stream)} events, expected {STREAM}")
        return reads / (time.perf_counter() - start)
    finally:
        conn.close()


def _catch_up_child(database: str, location: Any, name: str, out: Any) -> None:
    target = LOCATIONS[database](location)
    projection = Noop(name)
    with Processor(
        lambda: target.connect(False), target.store, ProcessorConfig(batch_size=1000)
    ) as processor:
        handled = processor.catch_up(projection)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put((handled, peak_kib / 1024))


def catch_up_peak_mib(database: str, target: Target, name: str, expected: int) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(
        target=_catch_up_child, args=(database, location_of(database, target), name, out)
    )
    child.start()
    handled, peak = out.get(timeout=1800)
    child.join(60)
    if handled != expected:
        raise AssertionError(f"catch-up handled {handled} events, expected {expected}")
    return float(peak)


def run(
    database: str,
    build: Callable[[], Target],
    small: int,
    large: int,
    quick: bool,
    rounds: int = 3,
    big: bool = False,
    info: dict[str, Any] | None = None,
) -> list[ScaleResult]:
    """S2, S2t, S4 and SM on ``database``; each figure is the best of
    ``rounds`` rounds per store (1 when ``quick``). With ``big``, no SM (a
    catch-up of the whole store), the stores loaded by COPY (PostgreSQL).
    ``info`` receives the database's description, the rounds and the seconds
    each store took to load."""
    if big and database != "postgres":
        raise ValueError(f"--big loads by COPY, which is PostgreSQL's; got {database}")
    rounds = 1 if quick else rounds
    if info is not None:
        info["rounds"] = rounds
    transactions = 50 if quick else 1000
    reads = 5 if quick else 200
    measures: dict[str, Callable[[Target, str], float]] = {
        "S2": lambda target, size: appends_per_second(target, transactions, size),
        "S2t": lambda target, size: appends_per_second(target, transactions, f"{size}-t", True),
        "S4": lambda target, size: reads_per_second(target, reads, "s4"),
    }
    stores: dict[str, Target] = {}
    try:
        for size, events in (("small", small), ("large", large)):
            stores[size] = target = build()
            conn = target.connect(False)
            target.store.append(conn, ExpectedVersion.any(), make_events("s4", 500))
            target.store.append(conn, ExpectedVersion.any(), make_events("s4", 500, 500))
            conn.commit()
            conn.close()
            loaded = time.perf_counter()
            fill(database, target, events - STREAM, 0, copy=big)
            took = time.perf_counter() - loaded
            if info is not None:
                info["database"] = target.database
                if database == "postgres":
                    info["shared_buffers"] = setting(target, "shared_buffers")
                info[f"load_seconds_{size}"] = round(took, 1)
            if big:
                print(f"{size} store: {events:,} events loaded and settled in {took:.0f} s")
        best: dict[tuple[str, str], float] = {}
        for key, measure in measures.items():
            for round_ in range(rounds):
                for size in ("small", "large") if round_ % 2 == 0 else ("large", "small"):
                    rate = measure(stores[size], size)
                    best[key, size] = max(best.get((key, size), 0.0), rate)
        for size, target in stores.items():
            if not big:
                best["SM", size] = catch_up_peak_mib(
                    database, target, f"scale_{size}", count(target)
                )
    finally:
        for target in stores.values():
            target.close()

    def result(key: str, metric: str, unit: str) -> ScaleResult:
        return ScaleResult(
            database, f"{key} {metric}", best[key, "small"], best[key, "large"], unit
        )

    metrics = [
        ("S2", "single-event append", "events/s"),
        ("S2t", "single-event append, uuid7 ids", "events/s"),
        ("S4", "read 1,000-event stream", "reads/s"),
        ("SM", "catch-up peak RSS", "MiB"),
    ]
    return [result(*m) for m in metrics if (m[0], "small") in best]


def passes(result: ScaleResult) -> bool:
    if result.unit == "MiB":
        return result.large - result.small <= 50
    return result.ratio >= 0.8


def format_rows(results: Sequence[ScaleResult], small: int, large: int) -> list[str]:
    lines = [
        f"Store growth: {small:,} -> {large:,} events",
        f"{'database':9} {'metric':36} {'small':>10} {'large':>10} {'unit':9} {'large/small':>11}",
    ]
    for r in results:
        lines.append(
            f"{r.database:9} {r.metric:36} {r.small:>10,.1f} {r.large:>10,.1f} {r.unit:9} "
            f"{r.ratio:>10.2f}x {'pass' if passes(r) else 'FAIL'}"
        )
    return lines


def write_json(
    path: Any, results: Sequence[ScaleResult], small: int, large: int, info: dict[str, Any]
) -> None:
    """The figures of one run, with when and where they were measured."""
    record = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "small": small,
        "large": large,
        **info,
        "results": [
            {
                "database": r.database,
                "metric": r.metric,
                "small": r.small,
                "large": r.large,
                "unit": r.unit,
                "ratio": r.ratio,
            }
            for r in results
        ],
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(record, out, indent=2)
        out.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 -> 6,000 events")
    parser.add_argument("--db", default="postgres,mysql,sqlite")
    parser.add_argument("--large", type=int, help=f"default {LARGE:,}; with --big {BIG:,}")
    parser.add_argument(
        "--big",
        action="store_true",
        help=f"PostgreSQL only: S2, S2t and S4 on {SMALL:,} against {BIG:,} events loaded by COPY "
        "(takes minutes; the schemas are dropped afterwards)",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.big:
        args.db = "postgres"
    large = args.large or (BIG if args.big else LARGE)
    small, large = (2_000, 6_000) if args.quick else (SMALL, large)
    available = builders()
    results: list[ScaleResult] = []
    info: dict[str, Any] = {}
    status = 0
    for database in [d.strip() for d in args.db.split(",") if d.strip()]:
        try:
            results += run(
                database, available[database], small, large, args.quick, big=args.big, info=info
            )
        except Unavailable as exc:
            print(f"{database}: database unavailable: {exc}", file=sys.stderr)
            status = UNAVAILABLE_EXIT_CODE
    print("\n".join(format_rows(results, small, large)))
    if args.output:
        write_json(args.output, results, small, large, info)
    return status


if __name__ == "__main__":
    sys.exit(main())
