"""``pupsourcing projections run`` and ``reset`` with the partition layout
guard: another partition count is one line and exit status 1, before any
worker starts; ``reset`` clears the recorded layout."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import assert_one_line_error, cli
from conftest import Backend
from helpers import events, query
from pupsourcing import ExpectedVersion
from pupsourcing.projection import ProcessorConfig


class Counter:
    name = "counter"  # as cli_projections:Counter

    def handle(self, event: object, tx: object) -> None:
        pass


def layouts(backend: Backend) -> dict[str, int]:
    conn = backend.connection()
    rows = query(conn, "SELECT projection_name, total_partitions FROM projection_layouts")
    conn.rollback()
    return {name: int(total) for name, total in rows}


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, event: object, tx: object) -> None:
        pass


def start(backend: Backend, total: int, projection: object = None) -> None:
    for key in range(total):
        config = ProcessorConfig(partition_key=key, total_partitions=total)
        with backend.Processor(backend.connect, backend.store, config) as processor:
            processor.catch_up(projection or Counter())


def test_run_refuses_another_layout_and_reset_clears_it(backend: Backend) -> None:
    start(backend, 2)
    assert layouts(backend) == {"counter": 2}
    run = ("projections", "run", "cli_projections:Counter", "--db", backend.url, "--no-progress")
    for extra, requested in (
        ((), 1),
        (("--partitions", "4"), 4),
        (("--partition-key", "0", "--total-partitions", "3"), 3),
    ):
        result = cli(*run, *extra)
        assert_one_line_error(
            result,
            "projection 'counter'",
            "total_partitions=2",
            f"total_partitions={requested}",
            "pupsourcing projections reset counter",
        )
        assert "started" not in result.stderr  # no worker was started
    assert backend.checkpoints() == {"counter_p0": 0, "counter_p1": 0}

    reset = cli("projections", "reset", "counter", "--yes", "--db", backend.url)
    assert reset.returncode == 0, reset.stderr
    assert layouts(backend) == {}
    start(backend, 4)
    assert layouts(backend) == {"counter": 4}


def two_projections_named_alike(backend: Backend) -> None:
    """Three events handled by "counter" and by "counter_p0", a projection of
    its own (its layout says so), not partition 0 of "counter"."""
    conn = backend.connect()
    backend.store.append(conn, ExpectedVersion.any(), events(3))
    conn.commit()
    conn.close()
    start(backend, 1, Named("counter_p0"))
    start(backend, 1)


def test_reset_leaves_a_projection_named_like_a_partition_alone(backend: Backend) -> None:
    two_projections_named_alike(backend)
    assert layouts(backend) == {"counter": 1, "counter_p0": 1}

    reset = cli("projections", "reset", "counter", "--yes", "--db", backend.url)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == "reset counter to position 0"
    assert backend.checkpoints() == {"counter": 0, "counter_p0": 3}
    assert layouts(backend) == {"counter_p0": 1}


def test_status_and_console_list_a_projection_named_like_a_partition_on_its_own(
    backend: Backend,
) -> None:
    """As reset: "counter_p0" has a layout record of its own, so it is a
    projection, not partition 0 of "counter"."""
    from pupsourcing.console import _queries
    from pupsourcing.urls import database

    two_projections_named_alike(backend)
    status = cli("projections", "status", "--json", "--db", backend.url)
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)["projections"]
    assert [(p["name"], p["partitioned"]) for p in listed] == [
        ("counter", False),
        ("counter_p0", False),
    ]
    assert [[c["checkpoint"] for c in p["checkpoints"]] for p in listed] == [
        ["counter"],
        ["counter_p0"],
    ]
    assert listed[1]["checkpoints"][0]["partition_key"] is None
    table = cli("projections", "status", "--db", backend.url)
    assert "2 checkpoints" not in table.stdout
    db = database(backend.url)
    conn = backend.connection()
    rows = _queries.projections(db, conn)
    conn.rollback()
    assert [(r["name"], r["partition"], r["total_partitions"]) for r in rows] == [
        ("counter", None, 1),
        ("counter_p0", None, 1),
    ]


def test_reset_works_on_a_store_without_the_layouts_table(backend: Backend) -> None:
    start(backend, 2)
    conn = backend.connection()
    query(conn, "DROP TABLE projection_layouts")
    conn.commit()
    reset = cli("projections", "reset", "counter", "--yes", "--db", backend.url)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == "reset counter_p0, counter_p1 to position 0"


def test_migrate_creates_the_layouts_table_by_its_given_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = cli("migrate", "--db", url, "--layouts-table", "my_layouts")
    assert result.returncode == 0, result.stderr
    assert "my_layouts" in result.stdout
    out = tmp_path / "generated"
    generated = cli(
        "migrate-gen", "--adapter", "sqlite", "--output", str(out), "--layouts-table", "gen_l"
    )
    assert generated.returncode == 0, generated.stderr
    text = "".join(p.read_text() for p in out.iterdir())
    assert 'CREATE TABLE IF NOT EXISTS "gen_l" (' in text
    assert "projection_layouts" not in text


def test_a_reset_that_fails_changes_nothing(sqlite_db: Backend) -> None:
    """The layout and every checkpoint are reset in one transaction: a
    reset failing part-way (here a trigger refuses partition 1's
    checkpoint; on SQLite, more often, the write lock not taken within the
    busy timeout) leaves the layout and the checkpoints as they were, not
    the layout gone with checkpoints that still say how far the old
    partitions got."""
    conn = sqlite_db.connection()
    sqlite_db.store.append(conn, ExpectedVersion.any(), events(4))
    conn.commit()
    start(sqlite_db, 2)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON projection_checkpoints "
        "WHEN OLD.projection_name = 'counter_p1' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    before = sqlite_db.checkpoints()
    assert before == {"counter_p0": 4, "counter_p1": 4}

    reset = cli("projections", "reset", "counter", "--yes", "--db", sqlite_db.url)
    assert_one_line_error(reset, "refused")
    assert sqlite_db.checkpoints() == before
    assert layouts(sqlite_db) == {"counter": 2}
