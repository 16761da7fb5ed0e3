"""Small builders shared by the tests."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pupsourcing import Event

MYPY_CACHE = (
    Path(tempfile.gettempdir())
    / f"pupsourcing-tests-mypy-cache-{os.getuid()}"
    / (os.environ.get("PYTEST_XDIST_WORKER") or "serial")
)
"""The ``--cache-dir`` of the tests that run mypy, kept from run to run (one
per pytest-xdist worker, whose tests run one at a time): only the first run
checks the standard library and this checkout from scratch, later ones
recheck what changed, as mypy's incremental mode always does."""


def event(
    aggregate_id: str = "agg-1",
    event_type: str = "Happened",
    *,
    bounded_context: str = "Shop",
    aggregate_type: str = "Order",
    data: Any = None,
    **fields: Any,
) -> Event:
    payload = json.dumps(data if data is not None else {"n": 1}).encode()
    return Event(bounded_context, aggregate_type, aggregate_id, event_type, payload, **fields)


def events(count: int, aggregate_id: str = "agg-1", **fields: Any) -> list[Event]:
    return [event(aggregate_id, f"E{i}", data={"i": i}, **fields) for i in range(count)]


def query(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on any DB-API connection; its rows (none for DML)."""
    cursor = conn.cursor()
    try:
        if params:
            cursor.execute(sql, params)
        else:  # no parameters: no %-formatting (PyMySQL, psycopg)
            cursor.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


class LogRecords(logging.Handler):
    """Collects the records of a fresh logger of its own, to hand to a
    processor as ``ProcessorConfig(logger=...)``."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


class Count:
    """A projection that counts the events it is handed."""

    name = "count"

    def __init__(self) -> None:
        self.seen = 0

    def handle(self, event: Any, tx: Any) -> None:
        self.seen += 1


MYSQL_HORIZON_SLACK = 30.0
"""Seconds a wait on MySQL's safe horizon may take in the parallel suite.
It waits for every writer transaction open on the server, in any database
(SHOW ENGINE INNODB STATUS does not say which table a transaction writes),
so other workers' transactions hold it back too: 0.5-1.2 s seen under load,
more when a test holds a transaction open on purpose; 35-90 ms on an idle
machine. A bound this wide still tells a wait that ends from one that never
does (a stalled horizon), which is what tests using it assert on MySQL."""


def horizon_bound(backend_name: str, seconds: float) -> float:
    """``seconds`` for a wait on the safe horizon, or the MySQL slack."""
    return max(seconds, MYSQL_HORIZON_SLACK) if backend_name == "mysql" else seconds


def without_modules(tmp_path: Path, *modules: str) -> dict[str, str]:
    """Environment for a fresh interpreter in which ``modules`` (and their
    submodules) cannot be imported, as if not installed: a ``sitecustomize``
    in ``tmp_path`` refuses them."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {modules!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
