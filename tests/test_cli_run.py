"""``pupsourcing projections run`` as operators use it: real processes, real
signals, real databases.

The projection under test (``cli_projections.Recorder``) writes one row per
event through ``tx`` into a table keyed by global position, so a duplicate
fails its batch and a skipped event is a missing row.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cli_projections
from cli_helpers import assert_one_line_error, cli, cli_argv, cli_env, execute
from conftest import Backend, require
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.cli.errors import CommandError
from pupsourcing.cli.loading import load_projection, load_projections
from pupsourcing.projection import HashPartitionStrategy

STARTED = re.compile(r"worker p(\d)/2 started \(pid (\d+)\)")


class Running:
    """A ``pupsourcing`` process whose stderr is collected as it arrives."""

    def __init__(self, *args: str, **env: str) -> None:
        self.process = subprocess.Popen(
            cli_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A fatal signal makes faulthandler print every thread's stack.
            env=cli_env(**{"PYTHONFAULTHANDLER": "1", **env}),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for line in list(self.lines) if (m := pattern.search(line))]

    def wait_for_line(self, pattern: str | re.Pattern[str], count: int = 1) -> re.Match[str]:
        regex = re.compile(pattern)
        wait_for(lambda: len(self.matches(regex)) >= count, what=f"{regex.pattern!r}", run=self)
        return self.matches(regex)[count - 1]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Hung: SIGABRT has faulthandler print where every thread is.
            self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self._reader.join(timeout=5)
            raise AssertionError(
                f"pupsourcing did not exit within {timeout} s; its stacks:\n{self.stderr}"
            ) from None
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Processes a test started; killed if the test left them running."""
    started: list[Running] = []
    yield started
    for run in started:
        run.kill()


def wait_for(
    condition: Any, timeout: float = 30.0, what: str = "", run: Running | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            log = f"\n--- stderr ---\n{run.stderr}" if run else ""
            raise AssertionError(f"timed out waiting for {what}{log}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def prepare(backend: Backend, aggregates: int, per_aggregate: int) -> None:
    """The recorder's table, and events spread over many aggregates."""
    conn = backend.connect()
    try:
        execute(conn, cli_projections.CREATE_TABLE)
        append_events(backend, conn, aggregates, per_aggregate)
    finally:
        conn.close()


def append_events(
    backend: Backend, conn: Any, aggregates: int, per_aggregate: int, tag: str = "a"
) -> None:
    for round_ in range(per_aggregate):
        for i in range(aggregates):
            backend.store.append(conn, ExpectedVersion.any(), [event(f"{tag}-{i}", f"E{round_}")])
    conn.commit()


def handled(backend: Backend) -> list[tuple[int, str, int]]:
    conn = backend.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(
            f"SELECT global_position, aggregate_id, worker_pid FROM {cli_projections.TABLE} "
            "ORDER BY global_position"
        )
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        return rows  # type: ignore[return-value]
    finally:
        conn.close()


def all_events(backend: Backend) -> dict[int, str]:
    conn = backend.connect()
    try:
        return {
            e.global_position: e.aggregate_id for e in backend.store.read_events(conn, 0, 100_000)
        }
    finally:
        conn.close()


def count(backend: Backend) -> int:
    return int(backend.scalar(f"SELECT count(*) FROM {cli_projections.TABLE}"))


def partition_of(aggregate_id: str, total: int = 2) -> int:
    return next(
        k for k in range(total) if HashPartitionStrategy().should_process(aggregate_id, k, total)
    )


def assert_exactly_once_up_to_checkpoints(backend: Backend, total: int | None = None) -> None:
    """The rows are exactly the events each checkpoint covers: nothing handled
    twice, nothing skipped, no batch half-applied."""
    rows = handled(backend)
    events_ = all_events(backend)
    marks = backend.checkpoints()
    assert len({r[0] for r in rows}) == len(rows)
    expected = {
        position
        for position, aggregate_id in events_.items()
        if position
        <= (
            marks.get("recorder", 0)
            if total is None
            else marks.get(f"recorder_p{partition_of(aggregate_id, total)}", 0)
        )
    }
    assert {r[0] for r in rows} == expected
    assert all(events_[position] == aggregate_id for position, aggregate_id, _ in rows)


# -- one process ---------------------------------------------------------------------------


def test_run_until_sigterm_then_resume(backend: Backend, running: list[Running]) -> None:
    prepare(backend, aggregates=10, per_aggregate=6)  # 60 events
    first = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url,
        "--batch-size", "5", "--progress-interval", "0.2",
        RECORDER_DELAY="0.02",
    )  # fmt: skip
    running.append(first)
    first.wait_for_line(r"recorder: position \d+ of 60 \(\d+\.\d%\), [\d,]+ events/s, ETA")
    wait_for(lambda: count(backend) >= 10, what="some events", run=first)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr
    assert "SIGTERM: stopping after the current batch" in first.stderr
    assert "stopped recorder" in first.stderr
    assert "Traceback" not in first.stderr
    stopped_at = backend.checkpoints()["recorder"]
    assert 10 <= stopped_at < 60, "stopped mid-way, after a whole batch"
    assert_exactly_once_up_to_checkpoints(backend)

    second = Running(
        "projections", "run", "cli_projections:recorder", "--progress-interval", "0.2",
        PUPSOURCING_DB=backend.url,
    )  # fmt: skip
    running.append(second)
    second.wait_for_line(r"recorder: caught up at position 60")
    second.signal(signal.SIGINT)
    assert second.wait() == 0, second.stderr
    assert_exactly_once_up_to_checkpoints(backend)
    assert count(backend) == 60


def test_reset_refuses_while_the_workers_run(backend: Backend, running: list[Running]) -> None:
    """An operator who forgets to stop the workers before a rebuild is
    stopped: the workers would go on writing into the read model."""
    prepare(backend, aggregates=10, per_aggregate=20)  # 200 events, about 10 s
    worker = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url,
        "--batch-size", "2", RECORDER_DELAY="0.05",
    )  # fmt: skip
    running.append(worker)
    wait_for(lambda: count(backend) >= 4, what="some events", run=worker)
    refused = cli("projections", "reset", "recorder", "--yes", "--db", backend.url)
    assert_one_line_error(
        refused, "projection 'recorder' is running (recorder moved within the last 1 s)",
        "Stop them first", "--force",
    )  # fmt: skip
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0, worker.stderr
    stopped_at = backend.checkpoints()["recorder"]
    assert 4 <= stopped_at < 200
    assert_exactly_once_up_to_checkpoints(backend)
    # Stopped as the docs say: the reset goes through at once.
    reset = cli("projections", "reset", "recorder", "--yes", "--db", backend.url)
    assert reset.returncode == 0, reset.stderr
    assert backend.checkpoints()["recorder"] == 0


def test_reset_refuses_while_claimed_partitions_are_leased(
    backend: Backend, running: list[Running]
) -> None:
    prepare(backend, aggregates=4, per_aggregate=1)
    worker = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url,
        "--total-partitions", "2", "--claim",
    )  # fmt: skip
    running.append(worker)
    wait_for(lambda: count(backend) == 4, what="every event", run=worker)
    refused = cli("projections", "reset", "recorder", "--yes", "--db", backend.url)
    message = assert_one_line_error(refused, "projection 'recorder' is running (leases held by ")
    assert re.search(r"leases held by [^ ]+:\d+:[0-9a-f]+", message), message
    assert set(backend.checkpoints().values()) == {4}
    forced = cli("projections", "reset", "recorder", "--yes", "--force", "--db", backend.url)
    assert forced.returncode == 0, forced.stderr
    assert set(backend.checkpoints().values()) == {0}


def test_run_several_projections_from_classes_and_factories(
    sqlite_db: Backend, running: list[Running]
) -> None:
    prepare(sqlite_db, aggregates=5, per_aggregate=2)
    conn = sqlite_db.connect()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("u", aggregate_type="User")])
    conn.commit()
    conn.close()
    run = Running(
        "projections", "run", "cli_projections:Counter", "cli_projections:make_recorder",
        "--db", sqlite_db.url, "--no-progress", "-v",
    )  # fmt: skip
    running.append(run)
    wait_for(
        lambda: sqlite_db.checkpoints() == {"counter": 11, "recorder": 11},
        what="both checkpoints at the head",
        run=run,
    )
    run.signal(signal.SIGINT)
    assert run.wait() == 0, run.stderr
    assert count(sqlite_db) == 11
    assert "projection recorder handled" in run.stderr  # -v logs every batch
    assert "caught up" not in run.stderr  # --no-progress


def test_a_failing_handler_exits_1_with_the_cause(sqlite_db: Backend) -> None:
    conn = sqlite_db.connect()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("fine")])
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("poison")])
    conn.commit()
    conn.close()
    result = cli("projections", "run", "cli_projections:Failing", "--db", sqlite_db.url)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "pupsourcing projections run: error: projection 'failing' failed at global "
        "position 2: RuntimeError: cannot handle poison"
    )
    assert "projection failing failed at global position 2; batch rolled back" in result.stderr
    assert sqlite_db.checkpoints().get("failing", 0) == 0  # the batch held both events


def test_one_partition_of_several(backend: Backend, running: list[Running]) -> None:
    prepare(backend, aggregates=12, per_aggregate=2)
    run = Running(
        "projections", "run", "cli_projections:Recorder", "--db", backend.url,
        "--partition-key", "1", "--total-partitions", "2", "--progress-interval", "0.2",
    )  # fmt: skip
    running.append(run)
    run.wait_for_line(r"\[p1/2\] .*recorder: caught up at position 24")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    assert backend.checkpoints() == {"recorder_p1": 24}
    rows = handled(backend)
    assert rows, "partition 1 has aggregates"
    assert {aggregate for _, aggregate, _ in rows} == {
        f"a-{i}" for i in range(12) if partition_of(f"a-{i}") == 1
    }
    assert_exactly_once_up_to_checkpoints(backend, total=2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--partitions", "2", "--partition-key", "0"], "do not combine"),
        (["--partitions", "2", "--total-partitions", "3"], "combine it with --total-partitions"),
        (["--partition-key", "0"], "go together"),
        (["--total-partitions", "2"], "go together"),
        (["--partition-key", "2", "--total-partitions", "2"], "must be below"),
        (["--partitions", "0"], "at least 1"),
        (["--batch-size", "0"], "at least 1"),
        (["--poll-interval", "-1"], "non-negative"),
        (["--progress-interval", "0"], "--progress-interval: must be a positive number"),
        (["--lease-ttl", "5"], "--lease-ttl needs --claim"),
        (["--partitions", "2", "--lease-ttl", "5"], "--lease-ttl needs --claim"),
    ],
)
def test_bad_partition_flags_are_usage_errors(flags: list[str], message: str) -> None:
    result = cli("projections", "run", "cli_projections:Recorder", *flags)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_projections", "name a projection as module:attribute"),
        ("no_such_module_x:Thing", "cannot import no_such_module_x"),
        ("cli_projections:Missing", "cli_projections has no attribute 'Missing'"),
        ("cli_projections:not_a_projection", "is not a projection"),
        ("cli_projections:NeedsArguments", "cannot create the projection without arguments"),
        ("cli_projections:AsyncHandle", "cli_projections:AsyncHandle: its handle() is async"),
    ],
)
def test_projections_that_cannot_be_loaded(spec: str, message: str, tmp_path: Path) -> None:
    result = cli("projections", "run", spec, "--db", "sqlite:///never.db", cwd=tmp_path)
    assert_one_line_error(result, message)
    assert not (tmp_path / "never.db").exists()


BROKEN_MODULE = """\
class Fine:
    name = "fine"
    def handle(self, event, tx): pass

def make_failing():
    raise ValueError("no ORDERS_DSN set")

def make_typo():
    return undefined_name

def needs_one(x):
    return Fine()

def make_type_error():
    return len(3)

if IMPORT_FAILS:
    raise RuntimeError("cannot reach the read model")
"""


@pytest.mark.parametrize(
    ("prefix", "attribute", "fragments"),
    [
        (
            "IMPORT_FAILS = True\n",
            "Fine",
            (
                "broken_mod:Fine: importing broken_mod raised RuntimeError: cannot reach the "
                "read model (",
                "broken_mod.py, line 19)",
            ),
        ),
        ("", "Fine", ("broken_mod:Fine: importing broken_mod raised NameError: name 'IMPORT_",)),
        (
            "IMPORT_FAILS = (\n",
            "Fine",
            ("broken_mod:Fine: importing broken_mod raised SyntaxError",),
        ),
        (
            "IMPORT_FAILS = False\n",
            "make_failing",
            (
                "broken_mod:make_failing: creating the projection raised ValueError: "
                "no ORDERS_DSN set (",
                "broken_mod.py, line 7)",
            ),
        ),
        (
            "IMPORT_FAILS = False\n",
            "make_typo",
            (
                "broken_mod:make_typo: creating the projection raised NameError: "
                "name 'undefined_name' is not defined (",
                "broken_mod.py, line 10)",
            ),
        ),
        (
            "IMPORT_FAILS = False\n",
            "make_type_error",
            ("broken_mod:make_type_error: creating the projection raised TypeError",),
        ),
        (
            "IMPORT_FAILS = False\n",
            "needs_one",
            ("broken_mod:needs_one: cannot create the projection without arguments",),
        ),
    ],
    ids=[
        "import-raises",
        "import-name-error",
        "syntax-error",
        "factory-value-error",
        "factory-name-error",
        "factory-type-error",
        "needs-arguments",
    ],
)
def test_a_module_or_factory_that_raises_is_one_line_naming_it(
    prefix: str, attribute: str, fragments: tuple[str, ...], tmp_path: Path
) -> None:
    (tmp_path / "broken_mod.py").write_text(prefix + BROKEN_MODULE)
    spec = f"broken_mod:{attribute}"
    result = cli("projections", "run", spec, "--db", "sqlite:///never.db", cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "never.db").exists()


def test_loading_instances_classes_factories_and_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_projection("cli_projections:recorder") is cli_projections.recorder
    assert type(load_projection("cli_projections:Recorder")) is cli_projections.Recorder
    assert type(load_projection("cli_projections:make_recorder")) is cli_projections.Recorder
    with pytest.raises(CommandError, match="two projections are named 'recorder'"):
        load_projections(["cli_projections:recorder", "cli_projections:Recorder"])
    (tmp_path / "local_projection_mod.py").write_text(
        "class Local:\n    name = 'local'\n    def handle(self, event, tx): pass\n"
        "class Outer:\n    Inner = Local\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_projection("local_projection_mod:Outer.Inner").name == "local"


# -- supervised workers --------------------------------------------------------------------


def test_partitions_restart_crashed_workers_and_handle_every_event_once(
    backend: Backend, running: list[Running]
) -> None:
    prepare(backend, aggregates=30, per_aggregate=4)  # 120 events
    supervisor = Running(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", backend.url, "--batch-size", "5", "--progress-interval", "0.3",
        RECORDER_DELAY="0.03",
    )  # fmt: skip
    running.append(supervisor)
    workers = {int(m[1]): int(m[2]) for m in (supervisor.wait_for_line(STARTED, n) for n in (1, 2))}
    assert sorted(workers) == [0, 1]
    wait_for(
        lambda: {pid for _, _, pid in handled(backend)} == set(workers.values()),
        what="both workers to commit a batch",
        run=supervisor,
    )

    os.kill(workers[0], signal.SIGKILL)  # a crash mid-batch
    supervisor.wait_for_line(
        rf"worker p0/2 \(pid {workers[0]}\) was killed by SIGKILL; restarting it in 1\.0s"
    )
    restarted = supervisor.wait_for_line(r"worker p0/2 started \(pid (\d+)\)", count=2)
    assert int(restarted[1]) != workers[0]
    wait_for(lambda: count(backend) == 120, what="all 120 events", run=supervisor)

    conn = backend.connect()
    append_events(backend, conn, aggregates=10, per_aggregate=2, tag="late")  # while running
    conn.close()
    wait_for(lambda: count(backend) == 140, what="the late events", run=supervisor)
    supervisor.wait_for_line(r"recorder: caught up at position 140")

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0, supervisor.stderr
    assert "all workers stopped" in supervisor.stderr
    assert supervisor.stderr.count("SIGTERM: stopping after the current batch") == 2
    assert not any(alive(pid) for pid in (*workers.values(), int(restarted[1])))
    assert backend.checkpoints() == {"recorder_p0": 140, "recorder_p1": 140}
    rows = handled(backend)
    assert [r[0] for r in rows] == sorted(all_events(backend))
    assert_exactly_once_up_to_checkpoints(backend, total=2)
    # both partitions did work, in three different worker processes
    assert len({pid for _, _, pid in rows}) == 3


def test_partitions_stop_mid_way_and_resume(backend: Backend, running: list[Running]) -> None:
    prepare(backend, aggregates=20, per_aggregate=4)  # 80 events
    args = (
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", backend.url, "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    first = Running(*args, RECORDER_DELAY="0.03")
    running.append(first)
    wait_for(lambda: count(backend) >= 12, what="some events", run=first)
    first.signal(signal.SIGINT)
    assert first.wait() == 0, first.stderr
    partial = count(backend)
    assert partial < 80, "stopped before the end"
    assert_exactly_once_up_to_checkpoints(backend, total=2)

    second = Running(*args)
    running.append(second)
    wait_for(lambda: count(backend) == 80, what="the rest", run=second)
    wait_for(
        lambda: backend.checkpoints() == {"recorder_p0": 80, "recorder_p1": 80},
        what="checkpoints at the head",
        run=second,
    )
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.stderr
    assert_exactly_once_up_to_checkpoints(backend, total=2)


def test_a_stop_while_the_workers_start_is_a_clean_stop(
    sqlite_db: Backend, running: list[Running]
) -> None:
    """SIGINT right after the workers were spawned: the SIGTERM forwarded to a
    worker still starting (no handler yet, no batch begun) kills it, which is
    a clean stop, not a failure."""
    prepare(sqlite_db, aggregates=4, per_aggregate=2)
    supervisor = Running(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", sqlite_db.url, "--no-progress",
    )  # fmt: skip
    running.append(supervisor)
    supervisor.wait_for_line(STARTED, 2)
    supervisor.signal(signal.SIGINT)
    assert supervisor.wait() == 0, supervisor.stderr
    assert "was killed by SIGTERM" not in supervisor.stderr


def test_a_second_signal_stops_everything_at_once(
    sqlite_db: Backend, running: list[Running]
) -> None:
    prepare(sqlite_db, aggregates=8, per_aggregate=5)
    supervisor = Running(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", sqlite_db.url, "--batch-size", "20", "--no-progress",
        RECORDER_DELAY="0.5",  # a batch takes ten seconds
    )  # fmt: skip
    running.append(supervisor)
    pids = [int(supervisor.wait_for_line(STARTED, n)[2]) for n in (1, 2)]
    supervisor.wait_for_line(r"\[p0/2\] .*running recorder")
    supervisor.wait_for_line(r"\[p1/2\] .*running recorder")
    time.sleep(0.5)  # inside the first batch
    began = time.monotonic()
    supervisor.signal(signal.SIGINT)
    supervisor.wait_for_line("SIGINT: stopping the workers after their current batch")
    supervisor.signal(signal.SIGINT)
    assert supervisor.wait() == 128 + signal.SIGINT
    # The batches would end about 9.5 s after the first signal: well before.
    assert time.monotonic() - began < 8, "did not wait for the batches"
    assert "SIGINT again: stopping now" in supervisor.stderr
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="workers gone")
    assert count(sqlite_db) == 0, "the interrupted batches rolled back"
    assert_exactly_once_up_to_checkpoints(sqlite_db, total=2)


def test_a_signal_after_giving_up_on_a_crash_loop_is_a_first_signal(
    sqlite_db: Backend, running: list[Running], tmp_path: Path
) -> None:
    """The supervisor stopping the other workers because one kept crashing
    is not a first signal: the operator's first Ctrl-C then still lets the
    batches finish, and only a second one stops at once."""
    prepare(sqlite_db, aggregates=8, per_aggregate=2)
    gate = tmp_path / "gate"
    supervisor = Running(
        "projections", "run", "cli_crash_loop:Gated", "--partitions", "2",
        "--db", sqlite_db.url, "--batch-size", "100", "--no-progress",
        GATE=str(gate),
    )  # fmt: skip
    running.append(supervisor)
    supervisor.wait_for_line(r"\[p1/2\] .*running recorder")
    supervisor.wait_for_line(r"not restarting it: stopping the other workers")
    supervisor.signal(signal.SIGINT)
    supervisor.wait_for_line(r"SIGINT: stopping the workers after their current batch")
    time.sleep(0.3)  # what a supervisor taking it as a second signal would do by then
    assert supervisor.process.poll() is None, supervisor.stderr
    gate.touch()  # partition 1's batch ends
    assert supervisor.wait() == 1, supervisor.stderr
    assert "stopping now" not in supervisor.stderr
    last = supervisor.lines[-1]
    assert "error: worker p0/2 exited with status 3, its 5th crash in a row" in last, last
    ones = [a for a in (f"a-{i}" for i in range(8)) if partition_of(a) == 1]
    assert count(sqlite_db) == 2 * len(ones), "partition 1 finished its batch"
    assert_exactly_once_up_to_checkpoints(sqlite_db, total=2)


def test_a_stop_signalled_to_every_process_at_once_is_one_clean_stop(
    backend: Backend, running: list[Running]
) -> None:
    """``systemctl stop`` (KillMode=control-group) sends SIGTERM to the
    supervisor and to every worker at once: the SIGTERM the supervisor then
    forwards is the workers' second, which must not abort their batches."""
    prepare(backend, aggregates=20, per_aggregate=4)  # 80 events
    supervisor = Running(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", backend.url, "--batch-size", "10", "--no-progress",
        RECORDER_DELAY="0.05",  # a batch takes half a second
    )  # fmt: skip
    running.append(supervisor)
    pids = [int(supervisor.wait_for_line(STARTED, n)[2]) for n in (1, 2)]
    wait_for(lambda: count(backend) >= 10, what="a batch", run=supervisor)
    for pid in (supervisor.process.pid, *pids):
        os.kill(pid, signal.SIGTERM)
    assert supervisor.wait() == 0, supervisor.stderr
    assert "stopping now" not in supervisor.stderr
    assert "all workers stopped" in supervisor.stderr
    assert not any(alive(pid) for pid in pids)
    assert 10 <= count(backend) < 80
    assert_exactly_once_up_to_checkpoints(backend, total=2)


def test_workers_stop_when_the_supervisor_dies(sqlite_db: Backend, running: list[Running]) -> None:
    prepare(sqlite_db, aggregates=4, per_aggregate=2)
    supervisor = Running(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", sqlite_db.url, "--no-progress",
    )  # fmt: skip
    running.append(supervisor)
    pids = [int(supervisor.wait_for_line(STARTED, n)[2]) for n in (1, 2)]
    supervisor.wait_for_line(r"\[p1/2\] .*running recorder")
    supervisor.wait_for_line(r"\[p0/2\] .*running recorder")
    supervisor.process.kill()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="orphans to stop")
    supervisor.wait()
    assert supervisor.stderr.count("the supervisor went away") == 2


def test_supervisor_checks_the_database_before_starting_workers() -> None:
    result = cli(
        "projections", "run", "cli_projections:Recorder", "--partitions", "2",
        "--db", "postgresql://postgres@127.0.0.1:1/test",
    )  # fmt: skip
    assert_one_line_error(result, "cannot connect to postgresql://postgres@127.0.0.1:1/test")


# -- progress on a terminal ----------------------------------------------------------------


def _progress_on_a_terminal(sqlite_db: Backend, **env: str) -> str:
    """What ``projections run`` draws on a pseudo-terminal until caught up."""
    prepare(sqlite_db, aggregates=10, per_aggregate=10)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        cli_argv("projections", "run", "cli_projections:Recorder", "--db", sqlite_db.url,
                 "--batch-size", "10"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**cli_env(RECORDER_DELAY="0.01", **env), "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(terminal)
    output = b""

    def read(until: bytes | None) -> None:
        nonlocal output
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (until is None or until not in output):
            if not select.select([controller], [], [], 0.2)[0]:
                if until is None and process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: every writer exited
                return
            if not chunk:
                return
            output += chunk

    try:
        read(b"caught up")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        read(None)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return output.decode()


def test_plain_progress_bar_on_a_terminal_with_no_color(sqlite_db: Backend) -> None:
    text = _progress_on_a_terminal(sqlite_db, NO_COLOR="1")
    assert "\x1b[3" not in text  # no colour
    bars = re.findall(r"recorder \[([#-]{24})\] +([\d.]+)% (\d+)/100 +([^\r\n\x1b]*)", text)
    assert bars, text
    assert any(re.fullmatch(r"[\d,]+ events/s, ETA \d+s", rest) for _, percent, _, rest in bars), (
        bars
    )
    assert bars[-1] == ("#" * 24, "100.0", "100", "caught up")
    assert "\r\x1b[2K" in text  # redrawn in place
    assert "recorder: position" not in text  # no log lines on a terminal


def test_rich_progress_bar_on_a_terminal(sqlite_db: Backend) -> None:
    require("rich")  # the cli extra, part of the dev extra
    text = _progress_on_a_terminal(sqlite_db, NO_COLOR="", FORCE_COLOR="")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    bars = re.findall(r"recorder ([━╸╺ ]{24}) +([\d.]+)% +(\d+)/100 +([^\r\n\x1b]*)", plain)
    assert bars, plain
    assert bars[-1][1:] == ("100.0", "100", "caught up")
    assert bars[-1][0] == "━" * 24
    assert "\x1b[32m" in text or "\x1b[38;" in text  # coloured
    assert "\r\x1b[2K" in text  # redrawn in place
    assert "#" * 24 not in text
