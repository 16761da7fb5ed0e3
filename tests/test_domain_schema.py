"""The snapshots table is an addition: the Go library's tables keep exactly
the DDL they had, on every database, and its name is configurable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cli_helpers import cli
from conftest import Backend
from helpers import query
from pupsourcing.adapters import _registry as registry
from pupsourcing.migrations import generate_sql
from pupsourcing.store import StoreConfig
from pupsourcing.store.schema import pairs, schema_statements

GO_TABLES_SQL_SHA256 = {
    # SHA-256 of the events, aggregate_heads and projection_checkpoints DDL
    # (statements only, default names) before the snapshots table existed.
    "postgres": "70578e4fe5cc692d0fce1874d72bd69e200eb9b47e655ec5ffcdb85e37da5579",
    "mysql": "e7fa14292528a44963e0e1a30f5b4dc69d54dd75ac14e0f647a47312db86e56c",
    "sqlite": "62ffff581314384c2c7139ad99827da0a7d91075eb1d4fbfdcac38d020244ca2",
}


@pytest.mark.parametrize("adapter", [a.name for a in registry.ADAPTERS])
def test_the_go_tables_ddl_is_unchanged(adapter: str) -> None:
    dialect = registry.adapter(adapter).store_class.dialect_class
    config = StoreConfig()
    statements = dialect.schema(config)
    own = [
        dialect.quote(t)
        for t in (
            "aggregate_snapshots",
            "projection_dead_letters",
            "projection_leases",
            "projection_layouts",
        )
    ]
    go = [(c, sql) for c, sql in statements if not any(t in sql for t in own)]
    [added] = [sql for _, sql in statements if own[0] in sql]
    [leases] = [sql for _, sql in statements if own[2] in sql]
    assert go == [
        s
        for s in pairs(schema_statements(config, dialect.quote, dialect.schema_dialect))
        if not any(t in s[1] for t in own)
    ]
    digest = hashlib.sha256(";\n".join(sql for _, sql in go).encode()).hexdigest()
    assert digest == GO_TABLES_SQL_SHA256[adapter]
    assert added.startswith(f"CREATE TABLE IF NOT EXISTS {dialect.quote('aggregate_snapshots')} (")
    for table in ("events", "aggregate_heads", "projection_checkpoints"):
        assert table not in added.replace("aggregate_snapshots", "")
    assert added in generate_sql(adapter)
    assert leases.startswith(f"CREATE TABLE IF NOT EXISTS {dialect.quote('projection_leases')} (")
    assert leases in generate_sql(adapter)


def test_the_snapshots_table_name_is_a_validated_identifier() -> None:
    assert StoreConfig().snapshots_table == "aggregate_snapshots"
    with pytest.raises(ValueError, match="snapshots_table"):
        StoreConfig(snapshots_table="bad name; DROP")
    with pytest.raises(ValueError, match="distinct"):
        StoreConfig(snapshots_table="events")


def test_create_schema_makes_the_snapshots_table_idempotently(sqlite_db: Backend) -> None:
    conn = sqlite_db.connection()
    sqlite_db.store.create_schema(conn)  # second time: nothing changes
    conn.commit()
    columns = [row[1] for row in query(conn, "PRAGMA table_info(aggregate_snapshots)")]
    assert columns == [
        "bounded_context",
        "aggregate_type",
        "aggregate_id",
        "aggregate_version",
        "schema_version",
        "state",
        "created_at",
    ]


@pytest.mark.parametrize("adapter", ["postgres", "mysql", "sqlite"])
def test_migrate_gen_takes_the_snapshots_table_name(adapter: str, tmp_path: Path) -> None:
    result = cli(
        "migrate-gen",
        "--adapter",
        adapter,
        "--output",
        str(tmp_path),
        "--filename",
        "init.sql",
        "--snapshots-table",
        "shop_snapshots",
    )
    assert result.returncode == 0, result.stderr
    sql = (tmp_path / "init.sql").read_text()
    assert sql == generate_sql(adapter, StoreConfig(snapshots_table="shop_snapshots"))
    assert "shop_snapshots" in sql
    assert "aggregate_snapshots" not in sql
    bad = cli(
        "migrate-gen", "--adapter", adapter, "--output", str(tmp_path), "--snapshots-table", "x;"
    )
    assert bad.returncode != 0
    assert "snapshots_table" in bad.stderr
