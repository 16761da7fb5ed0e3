"""Packaging promises: a stdlib-only core, typed, importable without drivers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pupsourcing

PACKAGE = Path(pupsourcing.__file__).parent


def test_py_typed_marker() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_core_imports_only_the_standard_library() -> None:
    code = """
import sys
before = set(sys.modules)
import pupsourcing, pupsourcing.store, pupsourcing.migrations, pupsourcing.cli
import pupsourcing.adapters.sqlite, pupsourcing.adapters.postgres, pupsourcing.adapters.mysql
import pupsourcing.aio, pupsourcing.runner
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
foreign = sorted(loaded - set(sys.stdlib_module_names) - {"pupsourcing"})
print(",".join(foreign))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"non-stdlib imports: {result.stdout}"


def test_the_asyncio_api_is_importable_from_one_place() -> None:
    from pupsourcing import aio
    from pupsourcing.runner import ProjectionRunner

    for name in (
        "AsyncPostgresStore",
        "AsyncMySQLStore",
        "AsyncSQLiteStore",
        "AsyncProcessor",
        "AsyncRunner",
        "ProjectionRunner",
    ):
        assert name in aio.__all__
        assert hasattr(aio, name)
    assert aio.ProjectionRunner is ProjectionRunner
    assert aio.AsyncPostgresStore().config == aio.AsyncSQLiteStore().config


def test_public_names() -> None:
    for name in (
        "Event",
        "PersistedEvent",
        "Stream",
        "AppendResult",
        "ExpectedVersion",
        "PupsourcingError",
        "OptimisticConcurrencyError",
        "NoEventsError",
        "InvalidEventError",
        "ProjectionError",
    ):
        assert hasattr(pupsourcing, name)
    from pupsourcing.adapters.postgres import PostgresStore
    from pupsourcing.adapters.sqlite import SQLiteStore
    from pupsourcing.store import StoreConfig

    assert StoreConfig().events_table == "events"
    assert StoreConfig().checkpoints_table == "projection_checkpoints"
    assert StoreConfig().aggregate_heads_table == "aggregate_heads"
    assert SQLiteStore().config == StoreConfig()
    assert PostgresStore(StoreConfig(events_table="e")).config.events_table == "e"
