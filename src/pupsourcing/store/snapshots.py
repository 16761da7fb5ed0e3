"""Aggregate snapshots: the table, its DDL and the plans that read and write it.

A table of its own (:attr:`StoreConfig.snapshots_table`) next to the Go
library's three, which stay exactly as they are: the Go library never sees
it. A snapshot is a cache of an aggregate's state at one version; the events
remain the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pupsourcing.store.plan import Plan, Statement
from pupsourcing.store.schema import SchemaDialect, SchemaStatement, create_table

if TYPE_CHECKING:
    from pupsourcing.store.config import StoreConfig
    from pupsourcing.store.dialect import Dialect

_COLUMNS = "bounded_context, aggregate_type, aggregate_id, aggregate_version, schema_version, state"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One aggregate's state at ``aggregate_version``, as ``state`` bytes.

    ``schema_version`` is the version of the state's layout (the aggregate
    class's ``snapshot_schema``): a reader asks for the one it understands.
    """

    bounded_context: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    schema_version: int
    state: bytes


def snapshot_statements(
    config: StoreConfig, quote: Callable[[str], str], d: SchemaDialect, state_type: str
) -> list[SchemaStatement]:
    """The snapshots table's DDL (idempotent)."""
    columns = [
        f"bounded_context {d.key_text} NOT NULL",
        f"aggregate_type {d.key_text} NOT NULL",
        f"aggregate_id {d.key_text} NOT NULL",
        f"aggregate_version {d.bigint} NOT NULL",
        f"schema_version {d.int} NOT NULL",
        f"state {state_type} NOT NULL",
        f"created_at {d.timestamp}",
        "PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)",
    ]
    return [
        create_table(
            quote,
            d,
            config.snapshots_table,
            "Aggregate snapshots (pupsourcing only; the Go library ignores this table): "
            "an aggregate's state at a version, so loading it replays only what came after.",
            columns,
        )
    ]


class SnapshotPlans:
    """The snapshot reads and writes of one dialect and config, as plans."""

    def __init__(self, dialect: Dialect) -> None:
        p = dialect.placeholder
        table = dialect.quote(dialect.config.snapshots_table)
        key = f"bounded_context = {p} AND aggregate_type = {p} AND aggregate_id = {p}"
        self.save_sql = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES ({', '.join([p] * 6)}) "
            f"{dialect.snapshot_on_conflict}"
        )
        self.read_sql = (
            f"SELECT aggregate_version, state FROM {table} WHERE {key} "
            f"AND schema_version = {p} AND aggregate_version <= {p} "
            "ORDER BY aggregate_version DESC LIMIT 1"
        )

    def save(self, snapshot: Snapshot) -> Plan[None]:
        from pupsourcing.store.dialect import check_name, check_position

        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
        if not isinstance(snapshot.state, bytes):
            raise TypeError(f"snapshot.state must be bytes, got {type(snapshot.state).__name__}")
        params = (
            check_name("bounded_context", snapshot.bounded_context),
            check_name("aggregate_type", snapshot.aggregate_type),
            check_name("aggregate_id", snapshot.aggregate_id),
            check_position("aggregate_version", snapshot.aggregate_version),
            _check_schema(snapshot.schema_version),
            snapshot.state,
        )
        yield Statement(self.save_sql, params)

    def read(
        self,
        bounded_context: str,
        aggregate_type: str,
        aggregate_id: str,
        schema_version: int,
        max_version: int | None,
    ) -> Plan[Snapshot | None]:
        from pupsourcing.store.dialect import MAX_BIGINT, check_name, check_position

        key = (
            check_name("bounded_context", bounded_context),
            check_name("aggregate_type", aggregate_type),
            check_name("aggregate_id", aggregate_id),
        )
        high = MAX_BIGINT if max_version is None else check_position("max_version", max_version)
        rows = yield Statement(
            self.read_sql, (*key, _check_schema(schema_version), high), fetch=True
        )
        if not rows:
            return None
        version, state = rows[0]
        return Snapshot(*key, int(version), schema_version, bytes(state))


def _check_schema(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"schema_version must be an int, got {type(value).__name__}")
    if not 1 <= value <= 2**31 - 1:
        raise ValueError(f"schema_version must be from 1 to {2**31 - 1}, got {value}")
    return value
