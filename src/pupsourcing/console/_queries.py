"""What the console reads, as blocking functions of one connection that
return JSON values. They use the store's public read methods and the same
grouping as ``pupsourcing projections status``; the few reads the store has
no method for (a page of the log before a position, aggregates by id
prefix, an aggregate's head version) are single index lookups."""

from __future__ import annotations

import base64
import json
from typing import Any

from pupsourcing import PersistedEvent
from pupsourcing.cli._json import exact_json
from pupsourcing.cli.dead_letters import dead_letter_counts, dead_letter_json
from pupsourcing.cli.projections import lease_of, projection_groups
from pupsourcing.core.validation import nested_deeper_than
from pupsourcing.store.layout import missing_table, recorded_layouts
from pupsourcing.store.plan import Plan, Statement
from pupsourcing.urls import Database

JSON = dict[str, Any]


MAX_NESTING = 500
"""Payloads whose arrays and objects nest deeper are shown as base64: a
response holding them must stay well within the recursion limit, wherever
in the server's stack it is encoded."""


def _looks_wrapped(value: Any) -> bool:
    return (
        isinstance(value, dict) and list(value) == ["base64"] and isinstance(value["base64"], str)
    )


def decoded(data: bytes | None) -> Any:
    """The JSON value ``data`` holds, or ``{"base64": ...}`` when it is not
    UTF-8 JSON a response can carry as stored (``NaN``, infinities and lone
    surrogates are not; nor is nesting beyond :data:`MAX_NESTING`; nor JSON
    that Python reads as other values, see :func:`exact_json`); ``None``
    stays ``None``. A payload that is itself ``{"base64": "..."}`` is sent
    as base64 too: in a response that shape always means stored bytes."""
    if data is None:
        return None
    try:
        value = exact_json(data.decode("utf-8"))
        if _looks_wrapped(value):
            raise ValueError("the shape of bytes that are not JSON")
        brackets = data.count(b"[") + data.count(b"{")  # no deeper than this many
        if brackets > MAX_NESTING and nested_deeper_than(value, MAX_NESTING):
            raise ValueError("nested too deeply")
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")  # as sent
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        return {"base64": base64.b64encode(data).decode("ascii")}
    return value


def event_json(e: PersistedEvent) -> JSON:
    return {
        "global_position": e.global_position,
        "aggregate_version": e.aggregate_version,
        "bounded_context": e.bounded_context,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "event_type": e.event_type,
        "event_version": e.event_version,
        "event_id": str(e.event_id),
        "created_at": e.created_at.isoformat(),
        "payload": decoded(e.payload),
        "metadata": decoded(e.metadata),
        "causation_id": e.causation_id,
        "correlation_id": e.correlation_id,
        "trace_id": e.trace_id,
    }


def head(db: Database, conn: Any) -> int:
    return db.store.head_position(conn)


def _checkpoint_rows(db: Database, conn: Any) -> tuple[int, list[JSON]]:
    """The head and one row per checkpoint, partitions under their projection."""
    store_head = db.store.head_position(conn)
    groups, leases = projection_groups(db, conn)
    dead = dead_letter_counts(db, conn)
    layouts = db.store._run(conn, recorded_layouts(db.store.dialect))
    rows: list[JSON] = []
    for group in groups:
        # The recorded layout; without one (a store older than the record),
        # as many as the checkpoints show.
        total = layouts.get(group.name)
        if total is None:
            total = max((k for k in group.keys if k is not None), default=0) + 1
        for c, key in zip(group.checkpoints, group.keys, strict=True):
            lease = lease_of(group.name, key, leases)
            rows.append(
                {
                    "name": group.name,
                    "partition": key,
                    "total_partitions": total if key is not None else 1,
                    "checkpoint": c.position,
                    "lag": max(store_head - c.position, 0),
                    "updated_at": None if c.updated_at is None else c.updated_at.isoformat(),
                    "age_seconds": None if c.age is None else round(max(c.age, 0.0), 3),
                    "checkpoint_name": c.name,
                    "dead_letters": None if dead is None else dead.get(c.name, 0),
                    "owner": None if lease is None else lease.owner,
                    "lease_expires_in": None if lease is None else round(lease.expires_in, 3),
                }
            )
    return store_head, rows


_SPEC_FIELDS = ("name", "partition", "total_partitions", "checkpoint", "lag", "updated_at")


def projections(db: Database, conn: Any) -> list[JSON]:
    """``GET /api/projections``: one row per checkpoint."""
    _, rows = _checkpoint_rows(db, conn)
    return [{k: row[k] for k in _SPEC_FIELDS} for row in rows]


def overview(db: Database, conn: Any) -> JSON:
    """The head and every checkpoint with its lag, dead letters and owner."""
    store_head, rows = _checkpoint_rows(db, conn)
    return {"head": store_head, "projections": rows}


def _head_version(db: Database, key: tuple[str, str, str]) -> Plan[int]:
    rows = yield Statement(db.store.dialect.head_version_sql, key, fetch=True)
    return int(rows[0][0]) if rows else 0


def stream(
    db: Database,
    conn: Any,
    key: tuple[str, str, str],
    from_version: int | None,
    to_version: int | None,
) -> JSON | None:
    """The aggregate's version and its events within the bounds; ``None``
    when it has no event at all."""
    found = db.store.read_aggregate_stream(conn, *key, from_version, to_version)
    if from_version is None and to_version is None:
        if found.is_empty:
            return None
        version = found.version
    else:
        version = db.store._run(conn, _head_version(db, key))
        if version == 0:
            return None
    return {"version": version, "events": [event_json(e) for e in found]}


def events_after(db: Database, conn: Any, after: int, limit: int) -> list[JSON]:
    return [event_json(e) for e in db.store.read_events(conn, after, limit)]


def _before(db: Database, before: int | None, limit: int) -> Plan[list[PersistedEvent]]:
    d = db.store.dialect
    p = d.placeholder
    select = f"SELECT {', '.join(d.select_columns())} FROM {d.events_table}"
    where = "" if before is None else f" WHERE global_position < {p}"
    params = (limit,) if before is None else (before, limit)
    sql = f"{select}{where} ORDER BY global_position DESC LIMIT {p}"
    events: list[PersistedEvent] = yield Statement(sql, params, fetch=True, decode=d.events_decoder)
    return events


def log_page(db: Database, conn: Any, before: int | None, limit: int) -> list[JSON]:
    """Newest first: the ``limit`` events below position ``before`` (the
    newest when ``None``)."""
    return [event_json(e) for e in db.store._run(conn, _before(db, before, limit))]


def _like_prefix(prefix: str) -> str:
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _next_prefix(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix``
    (in code point order), or ``None`` when there is none."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return None
    following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # no surrogate
    return prefix[:-1] + chr(following)


_PG_COLLATION_SQL = (
    "SELECT to_jsonb(c), to_jsonb(d) FROM pg_attribute a "
    "JOIN pg_collation c ON c.oid = a.attcollation "
    "JOIN pg_database d ON d.datname = current_database() "
    "WHERE a.attrelid = CAST({p} AS regclass) AND a.attname = 'aggregate_id'"
)


def _in_code_point_order(collation: JSON, database: JSON) -> bool:
    """Whether a PostgreSQL collation (a ``pg_collation`` row; ``database``
    the ``pg_database`` row for the default one) sorts by code point: C and
    POSIX (C.UTF-8 too) of libc, and PostgreSQL 17's builtin provider."""
    if collation.get("collisdeterministic") is False:
        return False
    provider, locale = collation.get("collprovider"), collation.get("collcollate")
    if provider == "d":  # the database's default
        provider, locale = database.get("datlocprovider", "c"), database.get("datcollate")
    if provider == "b":
        return True
    return provider == "c" and (locale in ("C", "POSIX") or str(locale).startswith("C."))


def _code_point_order(db: Database) -> Plan[bool]:
    d = db.store.dialect
    sql = _PG_COLLATION_SQL.format(p=d.placeholder)
    rows = yield Statement(sql, (d.heads_table,), fetch=True)
    return bool(rows) and _in_code_point_order(rows[0][0], rows[0][1])


def code_point_order(db: Database, conn: Any) -> bool:
    """Whether the heads table's ids sort in code point order, so that the
    ids with a prefix are one range of its primary key: on SQLite (binary)
    and MySQL (``utf8mb4_bin`` keys) always; on PostgreSQL with a C
    collation, not with a language's (ICU, or libc's en_US.UTF-8, say)."""
    if db.url.adapter != "postgres":
        return True
    return db.store._run(conn, _code_point_order(db))


MAX_KINDS = 64
"""Above this many (bounded context, aggregate type) pairs, the prefix
search scans the heads table instead of one key range per pair."""


def _kinds(db: Database) -> Plan[list[tuple[str, str]]]:
    sql = f"SELECT DISTINCT bounded_context, aggregate_type FROM {db.store.dialect.heads_table}"
    rows = yield Statement(sql, fetch=True)
    return sorted((str(bc), str(kind)) for bc, kind in rows)


def kinds(db: Database, conn: Any) -> list[tuple[str, str]]:
    """Every (bounded context, aggregate type) with an aggregate."""
    return db.store._run(conn, _kinds(db))


def _aggregates(
    db: Database,
    prefix: str,
    kinds: list[tuple[str, str]] | None,
    limit: int,
    code_points: bool,
) -> Plan[list[tuple[Any, ...]]]:
    d = db.store.dialect
    p = d.placeholder
    # The range of ids with the prefix is one in code point order; under
    # another collation (PostgreSQL only) it is compared as "C" explicitly.
    column = "aggregate_id" if code_points else 'aggregate_id COLLATE "C"'
    where = f"{column} LIKE {p} ESCAPE '!'"
    params: list[object] = [_like_prefix(prefix)]
    upper = _next_prefix(prefix)
    if kinds is not None and upper is not None:
        # One range of the heads table's primary key per kind: index lookups
        # however many aggregates there are (in code point order; else the
        # kind's part of the key, its ids compared one by one).
        key = (
            f"(bounded_context = {p} AND aggregate_type = {p} "
            f"AND {column} >= {p} AND {column} < {p})"
        )
        where += f" AND ({' OR '.join([key] * len(kinds))})"
        for bc, kind in kinds:
            params += [bc, kind, prefix, upper]
    sql = (
        "SELECT bounded_context, aggregate_type, aggregate_id, aggregate_version "
        f"FROM {d.heads_table} WHERE {where} LIMIT {p}"
    )
    rows: list[tuple[Any, ...]] = yield Statement(sql, (*params, limit), fetch=True)
    return rows


def aggregates(
    db: Database,
    conn: Any,
    prefix: str,
    kinds: list[tuple[str, str]] | None,
    limit: int,
    code_points: bool = True,
) -> list[JSON]:
    """Aggregates whose id starts with ``prefix``, exact ids first: within
    the given (bounded context, aggregate type) pairs, or any (a scan)
    when ``kinds`` is ``None``. ``code_points``: whether the ids sort in
    code point order (:func:`code_point_order`)."""
    if kinds == []:
        return []
    rows = db.store._run(conn, _aggregates(db, prefix, kinds, limit, code_points))
    found = [
        {
            "bounded_context": bc,
            "aggregate_type": kind,
            "aggregate_id": aid,
            "version": int(version),
        }
        for bc, kind, aid, version in rows
    ]
    found.sort(key=lambda a: (a["aggregate_id"] != prefix, a["aggregate_id"], a["aggregate_type"]))
    return found


def dead_letters(db: Database, conn: Any, projection: str | None, limit: int) -> list[JSON] | None:
    """The first ``limit`` dead letters (of ``projection``); ``None`` without the table."""
    try:
        letters = db.store.list_dead_letters(conn, projection, limit=limit)
    except Exception as exc:
        if not missing_table(exc):
            raise
        return None
    return [dead_letter_json(d) for d in letters]
