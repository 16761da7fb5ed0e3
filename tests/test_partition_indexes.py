"""Partition indexes: one partial index per partition, which a partitioned
processor's query uses, so it no longer steps over other partitions' rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Backend, made_backend
from helpers import event
from pupsourcing import ExpectedVersion
from pupsourcing.migrations import partition_indexes_sql
from pupsourcing.projection import ProcessorConfig
from pupsourcing.store import StoreConfig

PARTITIONS = 4


class Keys:
    """Records which aggregates a projection handled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []

    def handle(self, event: Any, tx: Any) -> None:
        self.ids.append(event.aggregate_id)


def fill(backend: Backend, aggregates: int = 400, per_aggregate: int = 5) -> None:
    conn = backend.connection()
    for a in range(aggregates):
        batch = [event(f"acct-{a}", f"E{i}") for i in range(per_aggregate)]
        backend.store.append(conn, ExpectedVersion.any(), batch)
    conn.commit()


def plan_of(backend: Backend, sql: str, params: Any) -> str:
    conn = backend.connection()
    cursor = conn.cursor()
    explain = "EXPLAIN QUERY PLAN " if backend.name == "sqlite" else "EXPLAIN "
    cursor.execute(explain + sql, params)
    text = "\n".join(" ".join(str(column) for column in row) for row in cursor.fetchall())
    conn.rollback()
    return text


@pytest.mark.parametrize("name", ["postgres", "sqlite"])
def test_partitioned_fetch_reads_its_partition_index(name: str, tmp_path: Path) -> None:
    with made_backend(name, tmp_path) as backend:
        fill(backend)
        conn = backend.connection()
        script = partition_indexes_sql(name, PARTITIONS)
        for _ in range(2):  # idempotent
            if name == "sqlite":
                conn.executescript(script)
            else:
                conn.execute(script)
            conn.commit()
        if name == "postgres":
            conn.execute("ANALYZE events")
            conn.commit()
        dialect = backend.store.dialect
        for key in range(PARTITIONS):
            statement = dialect.fetch_statement(
                0, 2000, 100, (), (), (key, PARTITIONS), with_hash=True
            )
            assert f"idx_events_part{PARTITIONS}_{key}" in plan_of(
                backend, statement.sql, statement.params
            )

        # Every event reaches exactly one partition, through the indexes.
        seen: list[str] = []
        for key in range(PARTITIONS):
            projection = Keys(f"p{key}")
            config = ProcessorConfig(batch_size=50, partition_key=key, total_partitions=PARTITIONS)
            with backend.Processor(backend.connect, backend.store, config) as processor:
                processor.catch_up(projection)
            assert projection.ids
            assert len(set(projection.ids)) * 5 == len(projection.ids)
            seen += projection.ids
        assert sorted(seen) == sorted(f"acct-{a}" for a in range(400) for _ in range(5))


def test_partition_indexes_script() -> None:
    script = partition_indexes_sql("postgres", 3, StoreConfig(events_table="ev"))
    assert script.count("CREATE INDEX IF NOT EXISTS") == 3
    for key in range(3):
        assert (
            f'"idx_ev_part3_{key}"\n    ON "ev" (global_position) '
            f"WHERE (partition_hash % 3 = {key} OR partition_hash IS NULL);"
        ) in script
    with pytest.raises(ValueError, match=r"total_partitions: .*partial indexes"):
        partition_indexes_sql("mysql", 4)
    for bad in (1, 0, 257, True, 2.0, "4"):
        with pytest.raises(ValueError, match="total_partitions: must be an int from 2 to 256"):
            partition_indexes_sql("sqlite", bad)  # type: ignore[arg-type]
