"""Reusing an emptied test database for the next test of the same worker.

Creating a MariaDB database (or a PostgreSQL schema) with a store's tables
and dropping it again costs more than many tests themselves. So a backend's
cleanup empties its tables and keeps the database for the next backend with
the same store config on the same server, but only when the database still
holds exactly the objects the store created: a test that added, altered or
dropped a table (or left a session connected, on MariaDB) gets its database
dropped as before. Emptying resets the auto-increment counters and identity
sequences, so positions start at 1 again, as in a fresh store. What is left
over is dropped at the end of the session. ``PUPSOURCING_TEST_FRESH_DB=1``
turns reuse off (every test creates and drops its own again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

_free: dict[tuple[Any, ...], list[str]] = {}
"""Emptied databases (schemas) ready for reuse, by (kind, server, config)."""
_layouts: dict[tuple[Any, ...], str] = {}
"""The layout of a freshly created store, by the same key."""
_droppers: dict[tuple[Any, ...], Callable[[str], None]] = {}
_ENABLED = os.environ.get("PUPSOURCING_TEST_FRESH_DB", "") != "1"


def take(key: tuple[Any, ...]) -> str | None:
    """An emptied database (schema) for ``key``, if one is free."""
    free = _free.get(key)
    return free.pop() if free and _ENABLED else None


def remember_layout(key: tuple[Any, ...], layout: Callable[[], str]) -> None:
    """Record the layout of a store just created for ``key`` (the first one)."""
    if _ENABLED and key not in _layouts:
        _layouts[key] = layout()


def give_back(
    key: tuple[Any, ...], name: str, empty: Callable[[], str | None], drop: Callable[[str], None]
) -> None:
    """Empty the database ``name`` and keep it if its layout (``empty``'s
    answer, ``None`` when it cannot be reused) is the fresh one; else drop it."""
    _droppers.setdefault(key, drop)
    layout = None
    if _ENABLED:
        with contextlib.suppress(Exception):
            layout = empty()
    if layout is not None and layout == _layouts.get(key):
        _free.setdefault(key, []).append(name)
    else:
        drop(name)


def drop_all() -> None:
    """Drop every database kept for reuse (at the end of the session)."""
    for key, names in _free.items():
        for name in names:
            with contextlib.suppress(Exception):
                _droppers[key](name)
    _free.clear()


# -- MariaDB/MySQL ---------------------------------------------------------------


def mysql_layout(admin: Any, database: str) -> str:
    """Every table, view, trigger and routine of ``database``, as the server
    would create them again."""
    cursor = admin.cursor()
    cursor.execute(f"SHOW FULL TABLES FROM {database}")
    tables = sorted((str(r[0]), str(r[1])) for r in cursor.fetchall())
    parts = [f"{name} {kind}" for name, kind in tables]
    for name, _ in tables:
        cursor.execute(f"SHOW CREATE TABLE {database}.{name}")
        parts.append(str(cursor.fetchone()[1]))
    cursor.execute(
        "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
        "WHERE TRIGGER_SCHEMA = %s UNION ALL "
        "SELECT ROUTINE_NAME, ROUTINE_DEFINITION FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = %s",
        (database, database),
    )
    parts.extend(sorted(f"{r[0]} {r[1]}" for r in cursor.fetchall()))
    cursor.close()
    return "\n".join(parts).replace(database, "?")


def _holding_rows(cursor: Any, tables: list[str]) -> set[str]:
    """Which of ``tables`` (qualified names) hold a row: one query."""
    if not tables:
        return set()
    cursor.execute(
        " UNION ALL ".join(
            f"SELECT {i} FROM (SELECT 1 FROM {t} LIMIT 1) x" for i, t in enumerate(tables)
        )
    )
    return {tables[int(row[0])] for row in cursor.fetchall()}


def mysql_empty(admin: Any, database: str) -> str | None:
    """Empty every table of ``database`` and return its layout, or ``None``
    when a session is still connected to it. Only tables holding rows or
    with a moved auto-increment counter are truncated (TRUNCATE recreates
    the table: it costs more than many tests); any other change shows in
    the layout, and the database is dropped instead of reused."""
    cursor = admin.cursor()
    cursor.execute(
        "SELECT count(*) FROM information_schema.PROCESSLIST "
        "WHERE DB = %s AND ID <> CONNECTION_ID()",
        (database,),
    )
    if int(cursor.fetchone()[0]):
        return None
    cursor.execute(
        "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
        (database,),
    )
    tables = {f"{database}.{name}": counter for name, counter in cursor.fetchall()}
    moved = {t for t, counter in tables.items() if counter is not None and int(counter) > 1}
    for table in sorted(moved | _holding_rows(cursor, sorted(tables))):
        cursor.execute(f"TRUNCATE TABLE {table}")
    cursor.close()
    return mysql_layout(admin, database)


# -- PostgreSQL ------------------------------------------------------------------

_PG_LAYOUT = """
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT concat_ws(' ', 'c', c.relname, c.relkind, c.relpersistence, c.relacl,
         pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid),
         obj_description(c.oid, 'pg_class'),
         CASE WHEN c.relkind = 'S' THEN coalesce(pg_sequence_last_value(c.oid)::text, '-')
              WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END) AS line
    FROM pg_class c WHERE c.relnamespace = %(s)s::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'a', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
         a.attnotnull, a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
         a.attcollation::regcollation)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = %(s)s::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'i ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
    WHERE c.relnamespace = %(s)s::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'k', conname, pg_get_constraintdef(oid)) FROM pg_constraint
    WHERE connamespace = %(s)s::regnamespace
  UNION ALL
  SELECT 't ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal
  UNION ALL
  SELECT concat_ws(' ', 'p', p.oid::regprocedure, md5(p.prosrc)) FROM pg_proc p
    WHERE p.pronamespace = %(s)s::regnamespace
  UNION ALL
  SELECT 'y ' || t.typname FROM pg_type t
    WHERE t.typnamespace = %(s)s::regnamespace AND t.typtype NOT IN ('c', 'b')
  UNION ALL
  SELECT concat_ws(' ', 'n', n.nspacl, n.nspowner::regrole)
    FROM pg_namespace n WHERE n.oid = %(s)s::regnamespace
) lines
"""


def pg_layout(admin: Any, schema: str) -> str:
    """Every relation, column, index, constraint, trigger, function and
    grant of ``schema``, with each sequence's position."""
    row = admin.execute(_PG_LAYOUT, {"s": schema}).fetchone()
    return str(row[0] or "").replace(schema, "?")


def pg_empty(admin: Any, schema: str) -> str | None:
    """Empty every table of ``schema``, restart its sequences, and return
    its layout. Only tables holding rows are truncated and only sequences
    that moved restarted (TRUNCATE gives each table and index a new file:
    it costs more than many tests); any other change shows in the layout,
    and the schema is dropped instead of reused."""
    admin.execute("SET lock_timeout = '5s'")
    tables = [
        f"{schema}.{row[0]}"
        for row in admin.execute(
            "SELECT quote_ident(relname) FROM pg_class "
            "WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p')",
            (schema,),
        ).fetchall()
    ]
    with admin.cursor() as cursor:
        full = _holding_rows(cursor, tables)
    if full:
        admin.execute(f"TRUNCATE {', '.join(sorted(full))}")
    moved = admin.execute(
        "SELECT quote_ident(sequencename) FROM pg_sequences "
        "WHERE schemaname = %s AND last_value IS NOT NULL",
        (schema,),
    ).fetchall()
    for (sequence,) in moved:
        admin.execute(f"ALTER SEQUENCE {schema}.{sequence} RESTART")
    return pg_layout(admin, schema)
