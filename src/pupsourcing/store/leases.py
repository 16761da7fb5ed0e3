"""Partition leases: which process runs which partition of a projection.

A table of its own (:attr:`StoreConfig.leases_table`), pupsourcing's only;
the Go library never sees it. One row per (projection, partition) says who
holds it (``owner``, empty when free) until when (``expires_at``, seconds
since the epoch by the database's clock, so the processes' clocks never
matter). Every change is a compare-and-set ``UPDATE``: a partition is taken
only from its owner or once its lease has expired.

A relay (:class:`~pupsourcing.relay.NatsRelay`) holds partition 0 of
``relay_<name>``, so that one of its copies publishes at a time.

Rows with a negative ``partition_key`` are members, not partitions: each
running process keeps one up to date so the others count it (and make room
for it) before it holds any partition.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pupsourcing.store.plan import Plan, Statement
from pupsourcing.store.schema import SchemaDialect, SchemaStatement, create_table

if TYPE_CHECKING:
    from pupsourcing.store.config import StoreConfig
    from pupsourcing.store.dialect import Dialect

T = TypeVar("T")

MAX_OWNER_LENGTH = 200
"""Characters of an owner name."""
LOCK_WAIT = 0.2
"""A lease statement waits on a lock (a row another session holds, SQLite's
write lock) for at most this fraction of the TTL, then fails as transient
(see :meth:`Dialect.lock_wait_sql
<pupsourcing.store.dialect.Dialect.lock_wait_sql>`): the lease loop goes on
(claims, releases, stops) rather than waiting as long as the database lets it."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One row of the leases table.

    ``owner`` is ``""`` for a free partition; ``expires_in`` is the seconds
    until the lease runs out by the database's clock (negative once expired).
    ``partition_key`` is negative for a member row (see the module docs).
    """

    projection_name: str
    partition_key: int
    owner: str
    expires_in: float

    @property
    def live(self) -> bool:
        """Whether the lease is held and has not expired."""
        return bool(self.owner) and self.expires_in > 0


def member_key(owner: str) -> int:
    """The negative ``partition_key`` of ``owner``'s member row."""
    return -1 - (zlib.crc32(owner.encode("utf-8")) & 0x7FFFFFFF)


def lease_statements(
    config: StoreConfig, quote: Callable[[str], str], d: SchemaDialect, seconds_type: str
) -> list[SchemaStatement]:
    """The leases table's DDL (idempotent)."""
    columns = [
        f"projection_name {d.key_text} NOT NULL",
        f"partition_key {d.bigint} NOT NULL",
        f"owner {d.text} NOT NULL",
        f"expires_at {seconds_type} NOT NULL",
        f"heartbeat {seconds_type} NOT NULL",
        "PRIMARY KEY (projection_name, partition_key)",
    ]
    return [
        create_table(
            quote,
            d,
            config.leases_table,
            "Projection partition leases (pupsourcing only; the Go library ignores this "
            "table): which process runs which partition under `projections run --claim`, "
            "and which copy of a relay publishes, until expires_at (epoch seconds, "
            "database clock).",
            columns,
        )
    ]


class LeasePlans:
    """The statements on a dialect's leases table, as plans, each committed
    at once; the claiming runners run each as :meth:`transaction`."""

    def __init__(self, dialect: Dialect) -> None:
        p, now = dialect.placeholder, dialect.epoch_now_sql
        self.read_committed_sql = dialect.read_committed_sql
        self.isolation_sql = dialect.lease_isolation_sql
        self.begin_sql = dialect.begin_sql
        self.lock_wait_sql = dialect.lock_wait_sql
        table = dialect.quote(dialect.config.leases_table)
        key = f"projection_name = {p} AND partition_key = {p}"
        self.placeholder = p
        self.insert_sql = (
            f"INSERT INTO {table} (projection_name, partition_key, owner, expires_at, heartbeat) "
            f"VALUES ({p}, {p}, '', 0, 0) {dialect.on_duplicate_lease}"
        )
        self.select_sql = (
            f"SELECT projection_name, partition_key, owner, expires_at - {now} FROM {table}"
        )
        set_owner = f"UPDATE {table} SET owner = {p}, expires_at = {now} + {p}, heartbeat = {now}"
        self.acquire_sql = (
            f"{set_owner} WHERE {key} AND (owner = {p} OR owner = '' OR expires_at < {now})"
        )
        self.renew_sql = f"{set_owner} WHERE {key} AND owner = {p}"
        self.release_sql = (
            f"UPDATE {table} SET owner = '', expires_at = 0, heartbeat = {now} "
            f"WHERE {key} AND owner = {p}"
        )
        self.release_all_sql = (
            f"UPDATE {table} SET owner = '', expires_at = 0, heartbeat = {now} "
            f"WHERE projection_name = {p} AND partition_key >= 0 AND owner = {p}"
        )
        self.delete_sql = f"DELETE FROM {table} WHERE {key} AND owner = {p}"
        self.prune_sql = (
            f"DELETE FROM {table} WHERE projection_name = {p} AND partition_key < 0 "
            f"AND expires_at < {now} - {p}"
        )

    def prepare(self) -> Plan[None]:
        """Make a new lease connection's transactions READ COMMITTED (see
        :attr:`Dialect.read_committed_sql
        <pupsourcing.store.dialect.Dialect.read_committed_sql>`): each
        compare-and-set then judges the row as last committed, also when
        the database, role or server defaults to a stricter level."""
        if self.read_committed_sql is not None:
            yield Statement(self.read_committed_sql)

    def transaction(self, plan: Plan[T], ttl: float) -> Plan[T]:
        """``plan`` as one READ COMMITTED lease transaction of a lease of
        ``ttl`` seconds, for the caller to commit: where the dialect sets the
        level per transaction (see :attr:`Dialect.lease_isolation_sql
        <pupsourcing.store.dialect.Dialect.lease_isolation_sql>`), its
        statement comes first, after a BEGIN on an autocommit connection
        (where it would set nothing); then its lock waits are bounded to
        :data:`LOCK_WAIT` of ``ttl``."""
        if self.isolation_sql is not None:
            yield Statement(self.begin_sql, begin=True)
            yield Statement(self.isolation_sql)
        bound = self.lock_wait_sql(ttl * LOCK_WAIT)
        if bound is not None:
            yield Statement(bound)
        return (yield from plan)

    def ensure(self, projection_name: str, total_partitions: int) -> Plan[None]:
        """Create the free rows of partitions ``0..total_partitions-1`` that are missing."""
        for key in range(total_partitions):
            yield Statement(self.insert_sql, (projection_name, key))

    def list(self, projection_name: str | None = None) -> Plan[list[Lease]]:
        """The rows of ``projection_name`` (every projection's when ``None``),
        by projection and partition."""
        if projection_name is None:
            rows = yield Statement(
                f"{self.select_sql} ORDER BY projection_name, partition_key", fetch=True
            )
        else:
            rows = yield Statement(
                f"{self.select_sql} WHERE projection_name = {self.placeholder} "
                "ORDER BY partition_key",
                (projection_name,),
                fetch=True,
            )
        return [Lease(str(n), int(k), str(o), float(e)) for n, k, o, e in rows]

    def acquire(self, projection_name: str, key: int, owner: str, ttl: float) -> Plan[bool]:
        """Take (or keep) partition ``key`` for ``ttl`` seconds if it is free,
        expired or already ``owner``'s; whether ``owner`` holds it now."""
        rows = yield Statement(
            self.acquire_sql, (owner, float(ttl), projection_name, key, owner), rowcount=True
        )
        return int(rows[0][0]) == 1

    def renew(self, projection_name: str, key: int, owner: str, ttl: float) -> Plan[bool]:
        """Extend ``owner``'s lease by ``ttl`` seconds from now; ``False`` when
        it is no longer ``owner``'s (another process took it over)."""
        rows = yield Statement(
            self.renew_sql, (owner, float(ttl), projection_name, key, owner), rowcount=True
        )
        return int(rows[0][0]) == 1

    def release(self, projection_name: str, key: int, owner: str) -> Plan[bool]:
        """Free partition ``key`` if ``owner`` holds it."""
        rows = yield Statement(self.release_sql, (projection_name, key, owner), rowcount=True)
        return int(rows[0][0]) == 1

    def release_all(self, projection_name: str, owner: str) -> Plan[int]:
        """Free every partition of ``projection_name`` that ``owner`` holds
        (it stops: also one whose claim committed as it was interrupted,
        which it never ran); how many."""
        rows = yield Statement(self.release_all_sql, (projection_name, owner), rowcount=True)
        return int(rows[0][0])

    def announce(self, projection_name: str, owner: str, ttl: float) -> Plan[None]:
        """Keep ``owner``'s member row alive for ``ttl`` seconds (and drop
        member rows dead for longer than ``ttl``)."""
        key = member_key(owner)
        yield Statement(self.prune_sql, (projection_name, float(ttl)))
        yield Statement(self.insert_sql, (projection_name, key))
        yield from self.acquire(projection_name, key, owner, ttl)

    def leave(self, projection_name: str, owner: str) -> Plan[None]:
        """Drop ``owner``'s member row."""
        yield Statement(self.delete_sql, (projection_name, member_key(owner), owner))
