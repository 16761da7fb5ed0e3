"""Every committed event is handled exactly once per projection and partition,
in global-position order, while writers commit out of order: a bounded
version (a few seconds per database, writers' choices seeded) of a longer
randomized stress run of the projection engine.

test_gap_safety's stress follows one unpartitioned projection into memory.
This one runs, at once, an unpartitioned projection, a scoped one (filtered
reads over a window of positions), three partitions of a partitioned one and
a large-batch one started late (a backlog: long reads, and reads ahead on
PostgreSQL), while writers commit transactions of one or several appends,
some large, some rolled back, some with an append rolled back to a savepoint.
Each handler records what it is handed through ``tx``, so the record commits
with the checkpoint, and the records are checked against the events table.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, backends_and_apis, made_backend
from helpers import horizon_bound, query
from pupsourcing import Event, ExpectedVersion
from pupsourcing.projection import HashPartitionStrategy, ProcessorConfig

WRITE_SECONDS = 2.5
WRITERS = 3
PARTITIONS = 3
KINDS = [("Shop", "Order"), ("Shop", "User"), ("Billing", "Invoice"), ("Billing", "Order")]
# name -> (batch_size, aggregate_types, bounded_contexts, total_partitions, start delay)
PROJECTIONS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...], int, float]] = {
    "everything": (7, (), (), 1, 0.0),
    "shop_orders": (3, ("Order",), ("Shop",), 1, 0.0),
    "partitioned": (4, (), (), PARTITIONS, 0.0),
    "late_big": (500, (), (), 1, 1.0),
}


def partition_of(name: str, aggregate_id: str) -> int:
    total = PROJECTIONS[name][3]
    strategy = HashPartitionStrategy()
    return next(k for k in range(total) if strategy.should_process(aggregate_id, k, total))


class Recorder:
    """Records each event it is handed in the ``seen`` table, through ``tx``."""

    def __init__(self, name: str, placeholder: str) -> None:
        self.name = name
        _, self.aggregate_types, self.bounded_contexts, _, _ = PROJECTIONS[name]
        marks = ", ".join([placeholder] * 4)
        self.sql = (
            f"INSERT INTO seen (projection, part, global_position, event_id) VALUES ({marks})"
        )

    def handle(self, event: Any, tx: Any) -> None:
        part = partition_of(self.name, event.aggregate_id)
        cursor = tx.cursor()
        cursor.execute(self.sql, (self.name, part, event.global_position, str(event.event_id)))
        cursor.close()


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()
        self.unknown: set[str] = set()
        self.errors: list[BaseException] = []


def write(backend: Backend, seed: int, ledger: Ledger, until: float) -> None:
    rng = random.Random(seed)
    conn = backend.connect()
    try:
        while time.monotonic() < until:
            kept: list[str] = []
            undone: list[str] = []
            try:
                for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
                    r = rng.random()
                    if seed == 0 and r < 0.04:
                        count = rng.randint(100, 200)  # a large append
                    else:
                        count = 1 if r < 0.6 else rng.randint(2, 5)
                    context, kind = rng.choice(KINDS)
                    aggregate = f"a{rng.randrange(12)}" if rng.random() < 0.5 else uuid.uuid4().hex
                    batch = [Event(context, kind, aggregate, f"E{i}", b"{}") for i in range(count)]
                    ids = [str(e.event_id) for e in batch]
                    if rng.random() < 0.08:
                        cursor = conn.cursor()
                        cursor.execute("SAVEPOINT undone")
                        backend.store.append(conn, ExpectedVersion.any(), batch)
                        cursor.execute("ROLLBACK TO SAVEPOINT undone")
                        cursor.close()
                        undone += ids
                    else:
                        backend.store.append(conn, ExpectedVersion.any(), batch)
                        kept += ids
                if rng.random() < 0.4:
                    time.sleep(rng.random() * 0.02)  # held open: others commit meanwhile
                if rng.random() < 0.15:
                    conn.rollback()
                    with ledger.lock:
                        ledger.rolled_back.update(kept + undone)
                    continue
            except Exception:
                # A lost race between writers (a deadlock between
                # transactions of several appends, SQLite busy): rolled back.
                conn.rollback()
                with ledger.lock:
                    ledger.rolled_back.update(kept + undone)
                continue
            try:
                conn.commit()
            except Exception:
                with ledger.lock:
                    ledger.unknown.update(kept)
                    ledger.rolled_back.update(undone)
                conn.rollback()
                continue
            with ledger.lock:
                ledger.committed.update(kept)
                ledger.rolled_back.update(undone)
    except BaseException as exc:
        ledger.errors.append(exc)
    finally:
        conn.close()


def as_text(event_id: Any) -> str:
    if isinstance(event_id, bytes | bytearray):
        return str(uuid.UUID(bytes=bytes(event_id)))
    return str(uuid.UUID(str(event_id)))


@pytest.mark.parametrize("backend_api", backends_and_apis(["postgres", "sqlite", "mysql"]))
def test_every_committed_event_is_recorded_once_per_projection_and_partition(
    backend_api: tuple[str, str], tmp_path: Path
) -> None:
    name, api = backend_api
    with made_backend(name, tmp_path, api=api) as backend:
        run(backend)


def run(backend: Backend) -> None:
    conn = backend.connection()
    key = "BIGINT AUTO_INCREMENT" if backend.name == "mysql" else "BIGINT"
    identity = "" if backend.name == "mysql" else " GENERATED ALWAYS AS IDENTITY"
    if backend.name == "sqlite":
        key, identity = "INTEGER", " AUTOINCREMENT"
    query(
        conn,
        f"CREATE TABLE seen (id {key} PRIMARY KEY{identity}, projection VARCHAR(32) NOT NULL, "
        "part INT NOT NULL, global_position BIGINT NOT NULL, event_id VARCHAR(36) NOT NULL)",
    )
    conn.commit()
    placeholder = "?" if backend.name == "sqlite" else "%s"
    stop = threading.Event()
    failures: list[BaseException] = []
    processors: list[Any] = []

    def follow(projection: str, partition: int) -> None:
        batch, _, _, total, delay = PROJECTIONS[projection]
        config = ProcessorConfig(
            batch_size=batch, partition_key=partition, total_partitions=total, poll_interval=0.02
        )
        if stop.wait(delay):
            return
        processor = backend.Processor(backend.connect, backend.store, config)
        processors.append(processor)
        try:
            processor.run(Recorder(projection, placeholder), stop=stop)
        except BaseException as exc:
            failures.append(exc)

    followers = [
        threading.Thread(target=follow, args=(projection, k))
        for projection, (_, _, _, total, _) in PROJECTIONS.items()
        for k in range(total)
    ]
    for t in followers:
        t.start()
    ledger = Ledger()
    until = time.monotonic() + WRITE_SECONDS
    writers = [
        threading.Thread(target=write, args=(backend, seed, ledger, until))
        for seed in range(WRITERS)
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    head = int(backend.scalar("SELECT COALESCE(max(global_position), 0) FROM events"))
    names = [
        projection if total == 1 else f"{projection}_p{k}"
        for projection, (_, _, _, total, _) in PROJECTIONS.items()
        for k in range(total)
    ]
    deadline = time.monotonic() + horizon_bound(backend.name, 30.0)
    while time.monotonic() < deadline and not failures:
        checkpoints = backend.checkpoints()
        if all(checkpoints.get(n, 0) >= head for n in names):
            break
        time.sleep(0.05)
    stop.set()
    for t in followers:
        t.join(30)
    for processor in processors:
        processor.close()
    assert ledger.errors == []
    assert failures == []
    checkpoints = backend.checkpoints()
    assert all(checkpoints.get(n, 0) >= head for n in names), (head, checkpoints)

    rows = query(
        conn,
        "SELECT global_position, event_id, aggregate_id, aggregate_type, bounded_context "
        "FROM events ORDER BY global_position",
    )
    stored = [(int(g), as_text(e), a, t, b) for g, e, a, t, b in rows]
    ids = {e for _, e, _, _, _ in stored}
    assert ledger.committed <= ids
    assert not ledger.rolled_back & ids
    assert ids <= ledger.committed | ledger.unknown
    assert len(ledger.committed) > 50
    assert ledger.rolled_back

    recorded: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for projection, part, position, event_id in query(
        conn, "SELECT projection, part, global_position, event_id FROM seen ORDER BY id"
    ):
        recorded.setdefault((projection, int(part)), []).append((int(position), event_id))
    conn.commit()
    for projection, (_, types, contexts, total, _) in PROJECTIONS.items():
        for k in range(total):
            expected = [
                (g, e)
                for g, e, a, t, b in stored
                if (not types or t in types)
                and (not contexts or b in contexts)
                and partition_of(projection, a) == k
            ]
            got = recorded.get((projection, k), [])
            twice = [e for e, n in Counter(e for _, e in got).items() if n > 1]
            assert not twice, f"{projection}/{k}: handled twice: {twice[:5]}"
            positions = [g for g, _ in got]
            assert positions == sorted(positions), f"{projection}/{k}: out of order"
            missing = sorted({g for g, _ in expected} - set(positions))
            assert not missing, f"{projection}/{k}: skipped {missing[:10]}"
            assert got == expected, f"{projection}/{k}"
