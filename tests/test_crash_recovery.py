"""A projection worker killed with SIGKILL in the middle of a batch loses
nothing and applies nothing twice, on every database.

The worker (``crash_worker.py``) writes its read model through ``tx``: one
row per event and running balances, which a second application of an event
would change. It is killed several times — while its handler has written part
of a batch, at the last event of a batch (before the commit), at the first
event of one, and at random moments — and restarted each time. After every
kill the read model holds exactly the events up to the checkpoint; at the end
it equals the read model an uninterrupted run builds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Backend
from crash_worker import Ledger
from helpers import event, query
from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.projection import Processor

WORKER = Path(__file__).with_name("crash_worker.py")
ACCOUNTS = [f"acc-{n}" for n in range(6)]
EVENTS = 150
NAME = "ledger"


def mark(backend: Backend) -> str:
    return "?" if backend.name == "sqlite" else "%s"


def create_read_model(backend: Backend, suffix: str) -> None:
    conn = backend.connect()
    query(conn, f"CREATE TABLE applied{suffix} (position BIGINT PRIMARY KEY, aggregate_id TEXT)")
    query(
        conn,
        f"CREATE TABLE balances{suffix} (account VARCHAR(64) PRIMARY KEY, total BIGINT NOT NULL)",
    )
    for account in ACCOUNTS:
        query(
            conn,
            f"INSERT INTO balances{suffix} (account, total) VALUES ({mark(backend)}, 0)",
            (account,),
        )
    conn.commit()
    conn.close()


def read_model(backend: Backend, suffix: str) -> tuple[list[tuple[int, str]], dict[str, int]]:
    conn = backend.connect()
    try:
        applied = query(conn, f"SELECT position, aggregate_id FROM applied{suffix} ORDER BY 1")
        balances = query(conn, f"SELECT account, total FROM balances{suffix}")
    finally:
        conn.close()
    return [(int(p), str(a)) for p, a in applied], {str(a): int(t) for a, t in balances}


def expected_model(
    every: list[PersistedEvent], upto: int
) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """What handling exactly the events at or below ``upto`` once builds."""
    balances = dict.fromkeys(ACCOUNTS, 0)
    applied = []
    for e in every:
        if e.global_position <= upto:
            applied.append((e.global_position, e.aggregate_id))
            balances[e.aggregate_id] += json.loads(e.payload)["amount"]
    return applied, balances


def start_worker(backend: Backend, pause_at: int, slow: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), backend.url, NAME, "", str(pause_at), str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def kill(worker: subprocess.Popen[str]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    assert worker.returncode == -signal.SIGKILL, worker.stderr.read() if worker.stderr else ""


def checkpoint(backend: Backend) -> int:
    conn = backend.connect()
    try:
        return backend.store.get_checkpoint(conn, NAME)
    finally:
        conn.close()


def test_sigkill_mid_batch_loses_nothing_and_applies_nothing_twice(backend: Backend) -> None:
    create_read_model(backend, "")
    create_read_model(backend, "_reference")
    rng = random.Random(8)
    conn = backend.connect()
    for _ in range(EVENTS):
        backend.store.append(
            conn,
            ExpectedVersion.any(),
            [event(rng.choice(ACCOUNTS), data={"amount": rng.randint(1, 1000)})],
        )
    conn.commit()
    every = backend.store.read_events(conn, 0, EVENTS + 1)
    conn.close()

    # Events handled by the worker before it is caught: the 7th (mid first
    # batch of 10), the 23rd (mid third), the 10th (last of a batch, before
    # its commit), the 1st (first of a batch).
    for pause_at in (7, 23, 10, 1):
        before = checkpoint(backend)
        worker = start_worker(backend, pause_at)
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line.startswith("paused"), (line, worker.stderr.read() if worker.stderr else "")
        position = int(line.split()[1])
        kill(worker)
        after = checkpoint(backend)
        assert before <= after < position  # the open batch did not commit
        assert read_model(backend, "") == expected_model(every, after)

    # And at moments nobody chose, with a slower handler.
    for _ in range(2):
        before = checkpoint(backend)
        worker = start_worker(backend, 0, slow=0.005)
        deadline = time.monotonic() + 30
        while checkpoint(backend) == before and time.monotonic() < deadline:
            time.sleep(0.005)  # it is working: a batch committed
        time.sleep(rng.uniform(0, 0.05))
        kill(worker)
        assert before < checkpoint(backend) < every[-1].global_position
        assert read_model(backend, "") == expected_model(every, checkpoint(backend))

    worker = start_worker(backend, 0)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.startswith("done")
    assert checkpoint(backend) == every[-1].global_position
    crashed = read_model(backend, "")
    assert crashed == expected_model(every, every[-1].global_position)

    # The uninterrupted run, in this process, builds the same read model.
    reference = Ledger("ledger_reference", "_reference", mark(backend), 0, 0.0)
    with Processor(backend.connect, backend.store) as processor:
        assert processor.catch_up(reference) == EVENTS
    assert read_model(backend, "_reference") == crashed
