"""SQL migration generation: the event store schema for each database.

>>> from pupsourcing.migrations import generate_sql
>>> "CREATE TABLE IF NOT EXISTS" in generate_sql("sqlite")
True
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pupsourcing.adapters import _registry as registry
from pupsourcing.store.config import StoreConfig
from pupsourcing.store.dialect import Dialect

__all__ = [
    "ADAPTERS",
    "default_filename",
    "generate_sql",
    "partition_indexes_sql",
    "write_migration",
]

ADAPTERS = registry.NAMES
"""The adapters' names, as ``migrate-gen --adapter`` takes them."""


def dialect_class(adapter: str) -> type[Dialect]:
    """The dialect of ``adapter`` (one of :data:`ADAPTERS`)."""
    return registry.adapter(adapter).dialect_class


def generate_sql(adapter: str, config: StoreConfig | None = None) -> str:
    """The schema script for ``adapter`` and ``config``: the same text the
    store's ``schema_sql()`` returns. Every statement is idempotent."""
    return dialect_class(adapter).render_schema(config or StoreConfig())


def partition_indexes_sql(
    adapter: str, total_partitions: int, config: StoreConfig | None = None
) -> str:
    """Partial indexes that let each of ``total_partitions`` partitioned
    processors read only its own partition's events (PostgreSQL and SQLite;
    MySQL has no partial indexes and gets ``ValueError``). Every statement is
    idempotent. Without them partitioning still works, but each processor's
    query steps over the other partitions' rows."""
    return dialect_class(adapter).render_partition_indexes(
        config or StoreConfig(), total_partitions
    )


def default_filename(now: datetime | None = None) -> str:
    """``<YYYYmmddHHMMSS>_init_event_sourcing.sql``, as the Go library names it."""
    return f"{(now or datetime.now()):%Y%m%d%H%M%S}_init_event_sourcing.sql"


def write_migration(
    adapter: str,
    output_dir: str | Path,
    *,
    filename: str | None = None,
    config: StoreConfig | None = None,
    overwrite: bool = False,
    partition_indexes: int | None = None,
) -> Path:
    """Write the schema script into ``output_dir`` (created if missing), with
    the :func:`partition_indexes_sql` for ``partition_indexes`` partitions
    appended when given.

    Refuses to replace an existing file with different content unless
    ``overwrite`` is set (:class:`FileExistsError`), and an ``output_dir``
    that is a file (:class:`NotADirectoryError`).
    """
    sql = generate_sql(adapter, config)
    if partition_indexes is not None:
        sql += "\n" + partition_indexes_sql(adapter, partition_indexes, config)
    name = filename or default_filename()
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"filename: {name!r} must be a plain file name, not a path")
    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"output_dir: {directory} is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.exists() and not overwrite and target.read_text(encoding="utf-8") != sql:
        raise FileExistsError(f"{target} already exists with different content")
    target.write_text(sql, encoding="utf-8")
    return target
