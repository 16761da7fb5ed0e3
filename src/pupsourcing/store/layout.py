"""The partition layout guard: the ``total_partitions`` each projection's
checkpoints were made with, kept in ``StoreConfig.layouts_table`` (a table
of pupsourcing's own; the checkpoints table stays the Go library's).

A processor checks its layout once, before it handles anything
(:func:`check_layout`): the first start of a projection records its count,
every later start must have the same one. Stores whose checkpoints predate
the table have no record: the count is then inferred from the checkpoint
names (``<name>`` for an unpartitioned projection, ``<name>_p<k>`` for
partition k) where they tell it for certain, and only a start that agrees
with them is recorded. ``pupsourcing projections reset`` clears the record
(:func:`clear_layout`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

from pupsourcing.core.errors import PartitionLayoutError, SchemaError
from pupsourcing.store.dead_letter import belongs_to
from pupsourcing.store.plan import COMMIT, ROLLBACK, Statement

if TYPE_CHECKING:
    from pupsourcing.store.dialect import Dialect

LayoutPlan = Generator[Statement, Any, bool]


def _table(dialect: Dialect) -> str:
    return dialect.quote(dialect.config.layouts_table)


def _prefixed(dialect: Dialect, table: str, columns: str, name: str) -> Statement:
    """Rows of ``table`` named ``name`` or ``<name>_p...`` (the caller keeps
    the exact partitions: LIKE would need each database's escaping)."""
    p, prefix = dialect.placeholder, f"{name}_p"
    return Statement(
        f"SELECT {columns} FROM {table} WHERE projection_name = {p} "
        f"OR substr(projection_name, 1, {len(prefix)}) = {p}",
        (name, prefix),
        fetch=True,
    )


def inferred_layout(
    name: str, total: int, checkpoints: Iterable[tuple[str, int]], own: Iterable[str]
) -> int | None:
    """The partition count that ``name``'s checkpoints (``(checkpoint name,
    position)``) were certainly made with when it is not ``total``; ``None``
    when they agree with ``total`` or tell nothing for certain.

    Only checkpoints that moved count (a reset one handled nothing yet), and
    not those of projections with a layout of their own (``own``: an
    unpartitioned projection may be called ``orders_p1``). Partition k's
    checkpoint shows at least k + 1 partitions."""
    unpartitioned, keys = False, []
    skip = set(own) - {name}
    for checkpoint, position in checkpoints:
        if position <= 0 or checkpoint in skip or not belongs_to(checkpoint, name):
            continue
        if checkpoint == name:
            unpartitioned = True
        else:
            keys.append(int(checkpoint[len(name) + 2 :]))
    if unpartitioned and keys:
        return None  # both kinds: nothing certain
    if unpartitioned:
        return None if total == 1 else 1
    if keys and (total == 1 or max(keys) >= total):
        return max(keys) + 1
    return None


def _other_layouts(
    name: str, total: int, checkpoints: Iterable[tuple[str, int]], own: Iterable[str]
) -> list[str]:
    """``name``'s checkpoints at 0 that processors with ``total`` partitions
    never use: another count's, left by a reset (deleting them loses
    nothing, and ``projections status`` would count them lagging)."""
    skip = set(own) - {name}
    stale = []
    for checkpoint, position in checkpoints:
        if int(position) != 0 or checkpoint in skip or not belongs_to(checkpoint, name):
            continue
        if checkpoint == name:
            fits = total == 1
        else:
            fits = total > 1 and int(checkpoint[len(name) + 2 :]) < total
        if not fits:
            stale.append(checkpoint)
    return stale


def missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` is the driver's error for a table that does not exist,
    or the store's :class:`~pupsourcing.SchemaError` for one."""
    if isinstance(exc, SchemaError):
        return exc.column is None
    if getattr(exc, "sqlstate", None) == "42P01":  # PostgreSQL: undefined_table
        return True
    args = getattr(exc, "args", ())
    if args and args[0] == 1146:  # MySQL: ER_NO_SUCH_TABLE
        return True
    return str(exc).startswith("no such table")  # SQLite


def check_layout(dialect: Dialect, name: str, total: int) -> LayoutPlan:
    """Raise :class:`PartitionLayoutError` if ``name``'s checkpoints were made
    with another partition count than ``total``; record ``total`` at the
    first start. Ends its transaction (a commit: only the record is written).

    Answers ``False`` when the store has no layouts table (created before
    it existed, until ``pupsourcing migrate`` runs again): no guard then."""
    table, p = _table(dialect), dialect.placeholder
    for _ in range(2):  # a concurrent first start may record it between the two
        try:
            rows = yield Statement(
                f"SELECT total_partitions FROM {table} WHERE projection_name = {p}",
                (name,),
                fetch=True,
            )
        except Exception as exc:
            if not missing_table(exc):
                raise
            yield ROLLBACK
            return False
        if rows:
            yield COMMIT
            recorded = int(rows[0][0])
            if recorded != total:
                raise PartitionLayoutError(name, recorded, total)
            return True
        checkpoints = yield _prefixed(
            dialect, dialect.checkpoints_table, "projection_name, last_global_position", name
        )
        own = yield _prefixed(dialect, table, "projection_name", name)
        owned = [r[0] for r in own]
        inferred = inferred_layout(name, total, ((c, int(pos)) for c, pos in checkpoints), owned)
        yield COMMIT
        if inferred is not None:
            raise PartitionLayoutError(name, inferred, total)
        for stale in _other_layouts(name, total, checkpoints, owned):
            yield Statement(
                f"DELETE FROM {dialect.checkpoints_table} WHERE projection_name = {p} "
                "AND last_global_position = 0",
                (stale,),
            )
        # The reads' transaction ended first: on SQLite, where sqlite3 keeps
        # one open (autocommit=False), a transaction that has read cannot
        # wait for the write lock. The read-back below settles any race.
        yield Statement(
            f"INSERT INTO {table} (projection_name, total_partitions) VALUES ({p}, {p}) "
            + dialect.on_duplicate_checkpoint,
            (name, total),
        )
        yield COMMIT  # then read back: the record is ours or a concurrent start's
    return True


def layout_names(dialect: Dialect) -> Generator[Statement, Any, set[str]]:
    """Every projection with a layout record; empty when the store has no
    layouts table."""
    try:
        rows = yield Statement(f"SELECT projection_name FROM {_table(dialect)}", (), fetch=True)
    except Exception as exc:
        if not missing_table(exc):
            raise
        yield ROLLBACK
        return set()
    return {row[0] for row in rows}


def recorded_layouts(dialect: Dialect) -> Generator[Statement, Any, dict[str, int]]:
    """Every recorded layout: projection name to ``total_partitions``;
    empty when the store has no layouts table."""
    try:
        rows = yield Statement(
            f"SELECT projection_name, total_partitions FROM {_table(dialect)}", (), fetch=True
        )
    except Exception as exc:
        if not missing_table(exc):
            raise
        yield ROLLBACK
        return {}
    return {str(name): int(total) for name, total in rows}


def forget_layout(dialect: Dialect, name: str) -> Statement:
    """Deletes ``name``'s recorded layout (from a layouts table that exists)."""
    return Statement(
        f"DELETE FROM {_table(dialect)} WHERE projection_name = {dialect.placeholder}", (name,)
    )


def clear_layout(dialect: Dialect, name: str) -> LayoutPlan:
    """Forget ``name``'s recorded layout, in a transaction of its own; ``False``
    when the store has no layouts table."""
    try:
        yield forget_layout(dialect, name)
    except Exception as exc:
        if not missing_table(exc):
            raise
        yield ROLLBACK
        return False
    yield COMMIT
    return True
