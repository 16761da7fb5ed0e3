"""``pupsourcing projections dead-letters``, ``replay-dead-letters``, the
dead-letter counts of ``status`` and the supervisor's crash-loop limit, as
operators run them: real processes, real databases."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cli_projections
from cli_helpers import assert_one_line_error, cli, execute
from conftest import Backend
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.projection import ProcessorConfig
from test_cli_run import Running, handled, wait_for


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Processes a test started; killed if the test left them running."""
    started: list[Running] = []
    yield started
    for run in started:
        run.kill()


ALL_TABLES = ("--dead-letters-table", "projection_dead_letters")


def prepare(backend: Backend) -> list[int]:
    """The recorder's table and three events, the middle one poison."""
    conn = backend.connect()
    try:
        execute(conn, cli_projections.CREATE_TABLE)
        positions = [
            backend.store.append(conn, ExpectedVersion.any(), [event(aggregate)]).global_positions[
                0
            ]
            for aggregate in ("a-1", "poison", "a-2")
        ]
        conn.commit()
        return positions
    finally:
        conn.close()


def test_list_status_and_replay(backend: Backend) -> None:
    positions = prepare(backend)
    config = ProcessorConfig(max_attempts=2, on_failure="dead_letter")
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(cli_projections.Fixable()) == 2

    listed = cli("projections", "dead-letters", "--db", backend.url, *ALL_TABLES)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["PROJECTION", "POSITION", "ATTEMPTS", "FAILED", "ERROR"]
    assert re.match(
        rf"fixable +{positions[1]} +2 +\d+s ago +RuntimeError: cannot handle poison$", row
    ), row

    as_json = cli("projections", "dead-letters", "fixable", "--json", "--db", backend.url)
    [letter] = json.loads(as_json.stdout)
    assert letter["projection_name"] == "fixable"
    assert letter["global_position"] == positions[1]
    assert letter["attempts"] == 2
    assert letter["error_type"] == "RuntimeError"
    assert "RuntimeError: cannot handle poison" in letter["traceback"]
    none = cli("projections", "dead-letters", "other", "--db", backend.url)
    assert none.returncode == 0
    assert none.stdout.startswith("no dead letters of other")

    status = cli("projections", "status", "--db", backend.url)
    header, row = status.stdout.strip().splitlines()[-2:]
    assert header.split()[-2:] == ["DEAD", "LETTERS"], status.stdout
    assert (row.split()[0], row.split()[-1]) == ("fixable", "1"), status.stdout
    status_json = json.loads(cli("projections", "status", "--json", "--db", backend.url).stdout)
    assert [p["dead_letters"] for p in status_json["projections"]] == [1]
    assert [c["dead_letters"] for c in status_json["projections"][0]["checkpoints"]] == [1]

    failed = cli(
        "projections", "replay-dead-letters", "cli_projections:Fixable", "--db", backend.url
    )
    assert failed.stdout.strip() == "replayed 0 of 1 dead letters of fixable"
    assert_one_line_error(failed, "1 dead letter of fixable failed again and was kept")

    fixed = cli(
        "projections",
        "replay-dead-letters",
        "cli_projections:Fixable",
        "--db",
        backend.url,
        POISON_FIXED="1",
    )
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip() == "replayed 1 of 1 dead letters of fixable"
    assert [r[0] for r in handled(backend)] == positions
    again = cli("projections", "dead-letters", "--json", "--db", backend.url)
    assert json.loads(again.stdout) == []
    assert "dead letters" not in cli("projections", "status", "--db", backend.url).stdout


def test_run_with_dead_letters_goes_on(sqlite_db: Backend, running: list[Running]) -> None:
    positions = prepare(sqlite_db)
    run = Running(
        "projections",
        "run",
        "cli_projections:Fixable",
        "--db",
        sqlite_db.url,
        "--on-failure",
        "dead_letter",
        "--max-attempts",
        "2",
        "--no-progress",
    )
    running.append(run)
    wait_for(lambda: len(handled(sqlite_db)) == 2, what="the two good events", run=run)
    run.wait_for_line("recorded in projection_dead_letters as a dead letter")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    assert "attempt 1 of 2" in run.stderr
    assert sqlite_db.checkpoints() == {"fixable": positions[-1]}


def test_supervisor_gives_up_on_a_crash_looping_worker(
    sqlite_db: Backend, running: list[Running]
) -> None:
    supervisor = Running(
        "projections",
        "run",
        "cli_crashing:Projection",
        "--partitions",
        "2",
        "--db",
        sqlite_db.url,
        "--no-progress",
    )
    running.append(supervisor)
    code = supervisor.wait(timeout=120)
    assert code == 1, supervisor.stderr
    last = supervisor.stderr.strip().splitlines()[-1]
    assert re.search(
        r"worker p[01]/2 exited with status 3, its 5th crash in a row within 60s; "
        "not restarting it",
        last,
    ), supervisor.stderr
    starts = re.findall(r"worker (p[01])/2 started", supervisor.stderr)
    assert max(starts.count("p0"), starts.count("p1")) == 5
    # Restarted after a doubling delay (cli_crashing starts it at 0.1 s).
    gave_up = re.findall(r"worker (p[01])/2 exited .* not restarting it", last)[0]
    delays = re.findall(rf"worker {gave_up}/2 .*; restarting it in ([\d.]+)s", supervisor.stderr)
    assert delays == ["0.1", "0.2", "0.4", "0.8"], supervisor.stderr


def test_migrate_gen_writes_the_dead_letters_table(tmp_path: Path) -> None:
    for adapter, quote in (("postgres", '"'), ("mysql", "`"), ("sqlite", '"')):
        out = tmp_path / adapter
        result = cli(
            "migrate-gen",
            "--adapter",
            adapter,
            "--output",
            str(out),
            "--filename",
            "init.sql",
            "--dead-letters-table",
            "dl_custom",
        )
        assert result.returncode == 0, result.stderr
        text = (out / "init.sql").read_text()
        assert f"CREATE TABLE IF NOT EXISTS {quote}dl_custom{quote} (" in text
        assert "PRIMARY KEY (projection_name, global_position)" in text
        assert "projection_dead_letters" not in text


def test_two_replays_at_once_share_the_dead_letters(
    backend: Backend, running: list[Running], tmp_path: Path
) -> None:
    """Two operators replaying at once: each record is handled by one of
    them, and neither reports the other's records as failed again."""
    conn = backend.connect()
    try:
        execute(conn, cli_projections.CREATE_TABLE)
        for _ in range(3):
            backend.store.append(conn, ExpectedVersion.any(), [event("poison")])
        conn.commit()
    finally:
        conn.close()
    config = ProcessorConfig(on_failure="dead_letter")
    with backend.Processor(backend.connect, backend.store, config) as processor:
        assert processor.catch_up(cli_projections.Fixable()) == 0
    gate, entered = tmp_path / "gate", tmp_path / "entered"
    env = {"POISON_FIXED": "1", "GATE": str(gate), "ENTERED": str(entered)}
    replay = ("projections", "replay-dead-letters", "cli_projections:GatedFixable")
    first = Running(*replay, "--db", backend.url, **env)
    running.append(first)
    wait_for(entered.exists, what="the first replay's handler", run=first)
    second = Running(*replay, "--db", backend.url, **env)
    running.append(second)
    time.sleep(2)  # the second lists the three records, then waits for the first's lock
    gate.touch()
    assert (first.wait(), second.wait()) == (0, 0), (first.stderr, second.stderr)
    outputs = [run.process.stdout.read() for run in (first, second)]  # type: ignore[union-attr]
    counts = [int(re.match(r"replayed (\d+) of", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(counts) == 3, outputs
    assert any("by another replay" in out for out in outputs), outputs
    assert [r[1] for r in handled(backend)] == ["poison"] * 3
