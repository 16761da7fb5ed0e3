"""Every benchmark on every database, one table, written to the docs.

Runs the store workloads (W1, W2, W2c, W4: ``*_store.py``), projection
catch-up (W3, W5: ``projections.py``) and store growth (S2, S2t, S4, SM:
``scale.py``) on PostgreSQL, MySQL/MariaDB and SQLite, each against its raw
driver baseline measured in the same run, then prints one table (figure,
baseline, ratio, target, pass/fail) and writes it as Markdown with a bar
chart (PNG) to ``docs/benchmarks/``.

Every database is judged against its targets (``TARGETS``).
MySQL is measured on PyMySQL (``mysql``) and, when installed, on mysqlclient
(``mysqlclient``: the store and the bare driver both on mysqlclient; no
store-growth figures, which are the server's).
The page states the machine and database versions, read from the system at
run time, and has a section for the 10,000,000-event scale run on PostgreSQL
(``scale.py --big``): from ``scale-10m.json`` in the output directory, which
``--big`` writes in the same run (it adds several minutes).

    python bench/run_all.py                 # 6 to 9 minutes on 2 cores
    python bench/run_all.py --big           # and the 10M scale run
    python bench/run_all.py --quick --output /tmp/bench   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import common
import projections
import scale

import pupsourcing

DATABASES = ("postgres", "mysql", "sqlite")
TARGETS: dict[str, float] = {
    "W1": 0.8,
    "W2": 0.6,
    "W2c": 0.8,
    "W4": 0.8,
    "W3/100": 0.7,
    "W3/1000": 0.55,
    "W5": 0.8,
}
"""The least ratio to the bare driver of each workload, on PostgreSQL."""
OWN_TARGETS: dict[str, dict[str, float]] = {
    "mysql": {"W2": 0.8, "W3/1000": 0.8},
    "mysqlclient": {"W2": 0.8, "W3/1000": 0.8},
    "sqlite": {"W2": 0.8, "W3/1000": 0.8},
}
"""Where another database is held to more than PostgreSQL's targets."""
FETCHED_TARGET = 1.05
"""The most rows a partitioned processor may fetch per row it handles."""


def target(database: str, key: str) -> float:
    """The least ratio to the bare driver for ``key`` on ``database``."""
    return OWN_TARGETS.get(database, {}).get(key, TARGETS[key])


DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
BIG_RESULTS = "scale-10m.json"
"""The 10M scale run's figures, next to the page (``scale.py --big --output``)."""


@dataclass
class Row:
    database: str
    key: str
    workload: str
    figure: float
    baseline: float
    unit: str
    baseline_name: str
    target: float | None = None
    """Minimum ratio figure/baseline (None: reported only)."""
    note: str = ""
    max_growth: float | None = None
    """For memory: the most ``figure`` may exceed ``baseline`` by (instead of a ratio)."""
    max_ratio: float | None = None
    """For costs: the highest ratio figure/baseline (instead of a least one)."""

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline if self.baseline else float("nan")

    @property
    def passed(self) -> bool | None:
        if self.max_growth is not None:
            return self.figure - self.baseline <= self.max_growth
        if self.max_ratio is not None:
            return self.ratio <= self.max_ratio
        if self.target is None:
            return None
        return self.ratio >= self.target

    @property
    def verdict(self) -> str:
        return {None: "", True: "pass", False: "FAIL"}[self.passed]


CPU_TARGET = 1.15
"""The most CPU time per event (client and server) that 8 writers (W2c) or 4
partitions (W5) may cost against one: a figure the machine's speed and load
affect far less than the rates."""


def cpu_row(database: str, key: str, many: float, one: float, raw: float, complete: bool) -> Row:
    """The CPU time (client and server) per event of ``key`` against one
    writer or process: a figure the machine's speed and load affect far less
    than the rates. ``raw`` is the bare driver's own ratio, for comparison."""
    server = "client + server" if complete else "client only: the server's threads are not readable"
    return Row(
        database,
        f"{key} CPU",
        f"CPU time per event ({server}) against one",
        many,
        one,
        "us/event",
        "one",
        note=f"raw driver: {raw:.2f}x its one" if raw == raw else "",
        max_ratio=CPU_TARGET,
    )


def store_rows(database: str, scale_: common.Scale, versions: dict[str, str]) -> list[Row]:
    """W1, W2, W2c and W4; ``versions`` receives the database's description."""
    bench = projections.builders()[database]()
    versions[database] = bench.database
    try:
        results = common.run_workloads(bench, scale_)
    finally:
        bench.close()
    by_key = {r.workload.key: r for r in results}
    rows = [
        Row(
            database,
            key,
            by_key[key].workload.describe(scale_),
            by_key[key].store_rate,
            by_key[key].raw_rate,
            by_key[key].workload.unit,
            "raw driver",
            target(database, key),
            note=(
                f"store: {by_key['W2c'].store_rate / by_key['W2'].store_rate:.2f}x its 1 writer, "
                f"raw driver: {by_key['W2c'].raw_rate / by_key['W2'].raw_rate:.2f}x"
                if key == "W2c"
                else ""
            ),
        )
        for key in ("W1", "W2", "W2c", "W4")
    ]
    w2c, w2 = by_key["W2c"], by_key["W2"]
    rows.append(
        cpu_row(
            database,
            "W2c",
            w2c.store_cpu * 1e6,
            w2.store_cpu * 1e6,
            w2c.raw_cpu / w2.raw_cpu,
            w2c.cpu_complete,
        )
    )
    return rows


def projection_rows(database: str, events: int, rounds: int) -> list[Row]:
    result = projections.measure(database, projections.builders()[database], events, rounds)
    rows = [
        Row(
            database,
            f"W3/{batch}",
            f"catch-up of {events:,} events, batch {batch}",
            ours,
            raw,
            "events/s",
            "raw ordered paging, same page size",
            target(database, f"W3/{batch}"),
        )
        for batch, (ours, raw) in result.batch_rates.items()
    ]
    worst = max(result.fetched_per_handled)
    rows += [
        Row(
            database,
            "W5",
            f"{projections.PARTITIONS} partitions in 4 processes",
            result.partitioned,
            result.raw_partitioned,
            "events/s",
            "raw paging, 4 processes",
            target(database, "W5"),
            note=f"store: {result.partitioned / result.batch_rates[1000][0]:.2f}x its one "
            f"process, raw driver: {result.raw_scaling:.2f}x",
        ),
        Row(
            database,
            "W5 fetched",
            "rows fetched per row handled, worst partition",
            worst,
            1.0,
            "rows",
            "each row once",
            max_ratio=FETCHED_TARGET,
        ),
        cpu_row(
            database,
            "W5",
            result.cpu_partitioned * 1e6,
            result.cpu_single * 1e6,
            result.raw_cpu_ratio,
            True,
        ),
    ]
    return rows


def scale_rows(database: str, small: int, large: int, quick: bool, rounds: int) -> list[Row]:
    results = scale.run(database, projections.builders()[database], small, large, quick, rounds)
    rows = []
    for r in results:
        if r.unit == "MiB":
            rows.append(
                Row(
                    database,
                    r.metric.split()[0],
                    f"catch-up peak RSS, store of {large:,} vs {small:,} events",
                    r.large,
                    r.small,
                    "MiB",
                    f"same on {small:,} events",
                    max_growth=50,
                )
            )
        else:
            rows.append(
                Row(
                    database,
                    r.metric.split()[0],
                    f"{r.metric.split(' ', 1)[1]}, store of {large:,} vs {small:,} events",
                    r.large,
                    r.small,
                    r.unit,
                    f"same on {small:,} events",
                    0.8,
                )
            )
    return rows


def big_section(path: Path) -> str:
    """The page's section on the 10M scale run, from its JSON record."""
    how = (
        "`python bench/run_all.py --big`, or `python bench/scale.py --big --output "
        f"docs/benchmarks/{BIG_RESULTS}` before `python bench/run_all.py`"
    )
    if not path.exists():
        return f"Not measured for this page: run {how}."
    record = json.loads(path.read_text(encoding="utf-8"))
    small, large = record["small"], record["large"]
    rounds = record.get("rounds", 3)
    lines = [
        f"Measured on {record['when']} on {record['machine']}; "
        f"{record.get('database', 'PostgreSQL')}, shared_buffers "
        f"{record.get('shared_buffers', '?')}. The large store took "
        f"{record.get('load_seconds_large', float('nan')):,.0f} s to load by `COPY` and "
        "settle (VACUUM ANALYZE, CHECKPOINT). Each ratio compares figures of that run: "
        f"the store of {large:,} events against one of {small:,}, measured in alternation, "
        f"best of {rounds} round{'s' if rounds != 1 else ''} each. Reproduce with {how}.",
        "",
        "| db | key | workload | figure | baseline | ratio | target |  |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        key, metric = r["metric"].split(" ", 1)
        ratio = r["large"] / r["small"] if r["small"] else float("nan")
        lines.append(
            f"| {r['database']} | {key} | {metric}, store of {large:,} vs {small:,} events "
            f"| {r['large']:,.0f} {r['unit']} | {r['small']:,.0f} (same on {small:,} events) "
            f"| {ratio:.2f}x | >= 0.8x | {'pass' if ratio >= 0.8 else 'FAIL'} |"
        )
    return "\n".join(lines)


def table(rows: Sequence[Row], markdown: bool) -> str:
    header = ["db", "key", "workload", "figure", "baseline", "ratio", "target", ""]
    lines = []
    body = []
    for r in rows:
        target = "" if r.target is None else f">= {r.target:g}x"
        if r.max_ratio is not None:
            target = f"<= {r.max_ratio:g}x"
        if r.max_growth is not None:
            figure = f"{r.figure:,.1f} {r.unit}"
            base = f"{r.baseline:,.1f} ({r.baseline_name})"
            ratio = f"{r.figure - r.baseline:+.1f} {r.unit}"
            target = f"<= +{r.max_growth:g} {r.unit}"
        else:
            digits = 2 if r.max_ratio is not None else 0
            figure = f"{r.figure:,.{digits}f} {r.unit}"
            base = f"{r.baseline:,.{digits}f} ({r.baseline_name})"
            ratio = f"{r.ratio:.2f}x"
        body.append([r.database, r.key, r.workload, figure, base, ratio, target, r.verdict])
        if r.note:
            body.append(["", "", f"  {r.note}", "", "", "", "", ""])
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines.extend("| " + " | ".join(cells) + " |" for cells in body)
        return "\n".join(lines)
    widths = [max(len(str(c[i])) for c in [header, *body]) for i in range(len(header))]
    for cells in [header, *body]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def chart(rows: Sequence[Row], path: Path) -> None:
    """Ratios against targets, one group of bars per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r.key for r in rows if r.max_growth is None and r.max_ratio is None))
    databases = list(dict.fromkeys(r.database for r in rows))
    width = 0.8 / max(len(databases), 1)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, database in enumerate(databases):
        ratios = []
        for key in keys:
            match = [r for r in rows if r.database == database and r.key == key]
            ratios.append(match[0].ratio if match else 0.0)
        positions = [k + (i - (len(databases) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(positions, ratios, width, label=database)
    for k, key in enumerate(keys):
        targets = [r.target for r in rows if r.key == key and r.database == "postgres"]
        if targets and targets[0] is not None:
            ax.hlines(targets[0], k - 0.45, k + 0.45, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("ratio to baseline (dashed: PostgreSQL target)")
    ax.set_title("pupsourcing vs its baselines, measured in one run")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


PAGE = """# Benchmarks

Measured with `python bench/run_all.py` on {when}, pupsourcing {version}.

- Machine: {machine}
- Databases: {versions}

Every figure is compared with a baseline measured in the same run on this
machine, because absolute numbers drift on a shared machine and ratios do not;
no figure from another machine or library is shown beside them.
Every database is judged: the targets are PostgreSQL's, and MySQL/MariaDB and
SQLite are also held to 0.8x on W2 and W3/1000. CPU rows are the CPU time per
event of 8 writers (W2c) or 4 partitions (W5) against one, which the machine's
speed and core count affect far less than the rates; W5's one is a worker
process started as the partitions' are (forked, same imports, same heap)
that catches up every event, so that both sides pay the same start.
Each figure is the best of three rounds (catch-ups W3 and W5: four), sides
or store sizes alternating: the least disturbed on a shared machine.

![ratios to baselines](latest.png)

{table}

**Workloads.** W1: 200 transactions of 100 events (about 200-byte JSON
payloads). W2: 5,000 single-event transactions on one connection. W2c: 8
threads with their own connections, 1,000 single-event transactions each,
compared with W2 (gap safety on, no table lock). W4: reading a 1,000-event
stream 200 times. The raw baselines send the same SQL by hand with the bare
driver (psycopg 3, PyMySQL, sqlite3) and keep rows as tuples; the
`mysqlclient` rows run the MySQL store and its baseline both on mysqlclient. W3: catching up
on {events} events with a no-op projection, against the driver paging through
the table in order with the same SELECT. W5: the same events caught up by 4
partitions in 4 processes, against one process
(statistics refreshed and the load checkpointed first, as autovacuum and the
checkpointer would do shortly; every worker
connects before the clock starts). S2/S4/SM: append and read
speed and catch-up memory on a store of {large} events against one of
{small} events, both loaded, analyzed and checkpointed first, then measured
in alternation round by round (commit latency on this machine's disk drifts
by 2x within a minute). S2 appends events with the default random ids (`uuid4`), S2t
with time-ordered ones (`pupsourcing.uuid7()`): after a checkpoint,
PostgreSQL writes a full-page image of each page of the unique `event_id`
index an append first touches, and on a large store nearly every random id
lands on a page of its own (about 4x the WAL per append); time-ordered ids
share the index's last page.

## 10,000,000 events

S2 (single-event appends, random ids), S2t (the same with time-ordered ids)
and S4 (reading a 1,000-event stream) on PostgreSQL, with a store of
10,000,000 events loaded by `COPY`: appends and stream reads must stay flat
as the store grows. Too slow for every run, so measured on its own. S2t tells
the store's size from the random ids' `event_id` index (see S2 above): once
that index (roughly 30 to 45 bytes an event) outgrows `shared_buffers`, each random
id's page must also be read in and a dirty one written out, which
time-ordered ids, all landing on the index's last page, avoid.

{big}

## Notes

**Where the time goes** (profiled with py-spy and cProfile). Appends are
bound by round trips: one statement per append whatever its size (head upsert
and multi-row INSERT ... RETURNING together; binary arrays unnested on the
server above a few events), prepared by psycopg after a few runs. Reads and
catch-up pay first for the driver's own row loading (psycopg's C loaders, a
few µs a row for these 14 columns), then for building `PersistedEvent`s. A
frozen dataclass fills its slots through `object.__setattr__` (about 1.3 µs
a row); instead each adapter's decoder is one loop compiled from its column
conversions (as `dataclasses` writes `__init__`) that fills a slot-compatible
unfrozen subclass and then switches the instance's class: about 0.4 µs a row,
a third less than a constructor call per row. PostgreSQL sends `created_at`
as the interval since its epoch (one datetime addition makes the aware UTC
value; a naive timestamp needed two), and psycopg calls the store's row
factory as it reads each row of a stream or `read_events`, so the raw tuples
die at once instead of all of them staying alive until the whole result is
decoded (under cachegrind: about 40% fewer simulated L2 misses per W4 read,
level with raw). The processor decodes a batch 64 rows at a time while the
projection handles it, so events die young: holding a whole batch made the
garbage collector promote every event and run full collections of each
process's heap (half the gen-0 runs, and no full collection in a W5 worker,
since). Building the events and the collector walking them still cost a
stream read about 0.45 µs an event more than raw tuples; PostgreSQL reads now
hide that behind the server: libpq 17's chunked rows mode hands over 64 rows
at a time, decoded while the server produces the rest, through psycopg's
prepared statements (`Cursor.stream()` plans each query again, which cost
short streams more than chunking saved); a single-event stream is no
slower. SQLite's store fetches a stream 64 rows at a time (`fetchmany`, one C
loop) and decodes each chunk: stepping the cursor row by row from the
decoder's loop cost W4 about 8% more. Appends check every event before
sending anything; plain ASCII text fields are checked in one pass (about
1.3 µs an event for all checks). A stream read leaves out the three key columns the
caller already knows (the raw baseline runs the same SELECT). Filtered reads
(scopes, partitions) read a window of positions sized to the scope's
density: an open range with a selective filter and `ORDER BY ... LIMIT` made
PostgreSQL sort the whole tail. W5 runs with the partition indexes of
`migrate-gen --partition-indexes 4` (one partial index per partition, on
PostgreSQL and SQLite): without them each partition's query steps over the
other partitions' rows.

**PostgreSQL catch-up.** A batch is two round trips: its checkpoint's
compare-and-set with the next batch's read in one statement, and its COMMIT,
which opens the next batch's transaction in the same message. The handler
must find its batch's transaction open (psycopg's `with tx.transaction():`
in a handler is then a savepoint the batch rolls back with it), which the
bare paging, committing nothing, does not pay for: most of what separates
W3/100 from it. `python bench/catchup_floor.py` adds a batch's statements to
the bare paging one at a time, in one run: the compare-and-set with the read
alone, committing nothing, runs at about the bare paging's speed, and the
COMMIT's round trip is what brings W3/100 to about 0.7x before any event is
handled.

**SQLite catch-up.** At `synchronous=FULL` each batch's commit syncs the
write-ahead log (about 1 to 2 ms here), most of a no-op batch of 100; a
batch after one that wrote nothing but its checkpoint commits at `NORMAL`
instead (see the Projections page), in about 50 µs, and the level stays
lowered while batches keep writing nothing else. What is left is building
events: the bare baseline keeps sqlite3's tuples. An event's id (text),
metadata (text, as bytes) and timestamp (ISO text) cost more to convert than
the rest of the event together, so the decoders keep them as read and
`PersistedEvent` converts them when first read: a decoded row costs about
0.3 µs instead of 1.3 µs, for a projection that never reads them. The rest
of a batch of 100 (4 statements around the handler while batches stay lazy:
`BEGIN DEFERRED`, the checkpoint's compare-and-set, the read of what the
batch wrote and the commit, which writes two pages to the log: the
checkpoint's row and its `updated_at` index) is what keeps W3/100 well below
the bare paging, which commits nothing. mysqlclient's W3 is the same story:
its C row loading is so fast that decoding in Python dominates. `python
bench/instructions.py` counts the instructions per event of SQLite's W3 and
W4 under callgrind, for both sides: figures that do not move with the
machine's load (they leave out the kernel's file writes). Its W3r/1000 has
the projection read five fields of each event, as a read model's handler
does, against paging that reads the same five columns: a no-op projection
cannot show what reading a field costs. Every field but the three converted
on first read is a plain slot read (about 80 instructions), as on any
slotted class.

**Where the machine sets the limit.** W2c and W5 set our concurrent runs
against our own single one, so they measure the machine as much as the
library. The note under each shows the bare driver doing the same, and how
far it scales here. W2c: 8 writers gain over one while commits wait on the
disk, because one flush then commits many transactions; where a commit's
flush is short, one writer already keeps client and server busy and more
writers only add contention, for the bare driver as well. W5: one catch-up
keeps about one core busy, a little more where the client reads while the
server still sends (client and server backend otherwise take turns), and 4
partitions in 4 processes can only add what is left of the machine's cores;
every partition's read also visits every heap page. The bare driver paging
through the 4 partitions in 4 processes shows that ceiling, and the W3/1000
line shows our single catch-up against one bare process: the faster one
process already is, the less 4 can add. On SQLite each process has a page
cache of its own and every partition's rows lie on every page, so 4
partitions read the whole file 4 times (the bare driver's CPU per row rises
as much as ours). SQLite has one writer, but a batch of a projection that
writes nothing through `tx` (W5's no-op, a relay) takes the write lock only
for its checkpoint's compare-and-set and commit (`BEGIN DEFERRED`), so the
partitions decode and handle side by side; a handler that writes through
`tx` holds the lock from `BEGIN IMMEDIATE` to `COMMIT`, and its partitions
take turns.

**Reproduce.** Start PostgreSQL and MariaDB on their default local ports (see
the README), install with `pip install -e . --group dev`, then run
`python bench/run_all.py`. Each script in `bench/` also runs on its own, for
example `python bench/postgres_store.py --rounds 5` or
`python bench/projections.py --db postgres`.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--output", type=Path, default=DOCS, help=f"default {DOCS}")
    parser.add_argument("--db", default=",".join(DATABASES))
    parser.add_argument(
        "--big",
        action="store_true",
        help=f"also the 10M scale run on PostgreSQL (scale.py --big), into {BIG_RESULTS}",
    )
    args = parser.parse_args(argv)
    databases = with_mysqlclient([d.strip() for d in args.db.split(",") if d.strip()])

    # Three rounds of everything on every database, four of the catch-ups
    # (projections.ROUNDS): the whole run stays within its 10 minutes.
    rounds = 1 if args.quick else 3
    store_scale = common.QUICK if args.quick else replace(common.FULL, rounds=rounds)

    events = 2_000 if args.quick else 100_000
    small, large = (2_000, 6_000) if args.quick else (scale.SMALL, scale.LARGE)
    rows: list[Row] = []
    versions: dict[str, str] = {}
    started = time.monotonic()
    for database in databases:
        parts: dict[str, Callable[[str], list[Row]]] = {
            "stores": lambda db: store_rows(db, store_scale, versions),
            "projections": lambda db: projection_rows(
                db, events, 1 if args.quick else projections.ROUNDS
            ),
        }
        if database != "mysqlclient":  # store growth is the server's, whatever the driver
            parts["scale"] = lambda db: scale_rows(db, small, large, args.quick, rounds)
        spent = []
        try:
            for part, measure in parts.items():
                begun = time.monotonic()
                rows += measure(database)
                spent.append(f"{part} {time.monotonic() - begun:.0f} s")
        except common.Unavailable as exc:
            print(f"{database}: database unavailable: {exc}", file=sys.stderr)
            return common.UNAVAILABLE_EXIT_CODE
        print(f"{database}: done ({', '.join(spent)})", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.big:
        begun = time.monotonic()
        try:
            big_run(args.output / BIG_RESULTS, args.quick)
        except common.Unavailable as exc:
            print(f"postgres: database unavailable: {exc}", file=sys.stderr)
            return common.UNAVAILABLE_EXIT_CODE
        print(f"postgres 10M scale: done ({time.monotonic() - begun:.0f} s)", file=sys.stderr)
    print(f"all databases: {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(table(rows, markdown=False))
    chart(rows, args.output / "latest.png")
    page = PAGE.format(
        when=datetime.date.today().isoformat(),
        machine=common.machine(),
        versions="; ".join(versions[db] for db in databases if db in versions),
        big=big_section(args.output / BIG_RESULTS),
        version=pupsourcing.__version__,
        table=table(rows, markdown=True),
        events=f"{events:,}",
        small=f"{small:,}",
        large=f"{large:,}",
    )
    (args.output / "index.md").write_text(page, encoding="utf-8")
    print(f"\nwrote {args.output / 'index.md'} and {args.output / 'latest.png'}")
    failed = [r for r in rows if r.verdict == "FAIL"]
    return 0 if not failed or args.quick else 1


def with_mysqlclient(databases: list[str]) -> list[str]:
    """``databases``, with mysqlclient measured after PyMySQL (``mysql``) when
    it is installed: the store on each driver against that bare driver."""
    if "mysql" not in databases or "mysqlclient" in databases:
        return databases
    if importlib.util.find_spec("MySQLdb") is None:
        print("mysqlclient is not installed: MySQL measured on PyMySQL only", file=sys.stderr)
        return databases
    index = databases.index("mysql")
    return [*databases[: index + 1], "mysqlclient", *databases[index + 1 :]]


def big_run(path: Path, quick: bool) -> None:
    """S2, S2t and S4 on 10,000,000 events (``scale.py --big``), into ``path``."""
    small, large = (2_000, 6_000) if quick else (scale.SMALL, scale.BIG)
    info: dict[str, object] = {}
    results = scale.run(
        "postgres", projections.builders()["postgres"], small, large, quick, big=True, info=info
    )
    print("\n".join(scale.format_rows(results, small, large)))
    scale.write_json(path, results, small, large, info)


if __name__ == "__main__":
    sys.exit(main())
