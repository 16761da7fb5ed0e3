"""Correlation ids set once per unit of work, JSON log lines, and what the
observability hooks cost a program that installs none of the extras."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Backend
from helpers import event, without_modules
from pupsourcing import ExpectedVersion
from pupsourcing.correlation import correlation, current
from test_cli_run import Running, running

__all__ = ["running"]  # the fixture, imported for the tests below


def test_appends_inside_a_block_carry_its_ids(backend: Backend) -> None:
    conn = backend.connection()
    with correlation("req-1", causation_id="cmd-1"):
        result = backend.store.append(
            conn,
            ExpectedVersion.no_stream(),
            [event("o-1"), event("o-1", correlation_id="own"), event("o-1", causation_id="c")],
        )
        with correlation("req-2"):  # the inner block wins; None leaves a field alone
            inner = backend.store.append(conn, ExpectedVersion.any(), [event("o-1")])
    after = backend.store.append(conn, ExpectedVersion.any(), [event("o-1")])
    conn.commit()
    assert [(e.correlation_id, e.causation_id) for e in result.events] == [
        ("req-1", "cmd-1"),
        ("own", "cmd-1"),
        ("req-1", "c"),
    ]
    assert (inner.events[0].correlation_id, inner.events[0].causation_id) == ("req-2", None)
    assert (after.events[0].correlation_id, after.events[0].causation_id) == (None, None)
    stored = backend.store.read_aggregate_stream(conn, "Shop", "Order", "o-1")
    conn.rollback()
    assert [e.correlation_id for e in stored] == ["req-1", "own", "req-1", "req-2", None]


def test_concurrent_tasks_keep_their_own_ids() -> None:
    async def unit(name: str) -> tuple[str | None, str | None]:
        with correlation(name, causation_id=f"{name}-cause"):
            await asyncio.sleep(0.01)
            return current()

    async def main() -> list[tuple[str | None, str | None]]:
        return list(await asyncio.gather(unit("a"), unit("b")))

    assert asyncio.run(main()) == [("a", "a-cause"), ("b", "b-cause")]
    assert current() == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"correlation_id": ""}, "correlation_id"),
        ({"correlation_id": 7}, "correlation_id"),
        ({"correlation_id": "x", "causation_id": b"y"}, "causation_id"),
    ],
)
def test_bad_ids_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(TypeError, match=field), correlation(**kwargs):  # type: ignore[arg-type]
        pass
    assert current() == (None, None)


SCRIPT = textwrap.dedent(
    """
    import sys
    from pupsourcing import Event, ExpectedVersion, _observe
    from pupsourcing.adapters.sqlite import SQLiteStore, connect
    from pupsourcing.projection import Processor

    store = SQLiteStore()
    db = connect(":memory:")
    store.create_schema(db)
    store.append(db, ExpectedVersion.no_stream(), [Event("S", "A", "a", "E", b"{}")])
    db.commit()
    store.read_aggregate_stream(db, "S", "A", "a")

    class P:
        name = "p"
        def handle(self, event, tx):
            pass

    with Processor(db, store) as processor:
        assert processor.catch_up(P()) == 1
    assert _observe.observer is None, _observe.observer
    loaded = sorted(
        m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry")
        or m in ("pupsourcing.metrics", "pupsourcing.tracing")
    )
    print(loaded)
    """
)


@pytest.mark.parametrize("extras", ["installed", "absent"])
def test_without_the_extras_nothing_is_imported_or_hooked(tmp_path: Path, extras: str) -> None:
    env = dict(os.environ)
    if extras == "absent":
        env |= without_modules(tmp_path, "prometheus_client", "opentelemetry")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


BLOCKING = textwrap.dedent(
    """
    import sys
    import pupsourcing.cli
    from pupsourcing.adapters import mysql
    from pupsourcing.runner import Runner
    from pupsourcing.urls import database

    db = database("sqlite:///:memory:", create=True)
    conn = db.connect()
    db.store.create_schema(conn)

    class P:
        name = "p"
        def handle(self, event, tx):
            pass

    from pupsourcing.projection import Processor
    with Processor(conn, db.store) as processor:
        processor.catch_up(P())
    print(sorted(m for m in sys.modules if m.split(".")[0] == "asyncio"))
    """
)


def test_a_blocking_program_does_not_import_asyncio() -> None:
    """The CLI and a blocking processor start faster without it (about
    40 ms of CPU per process)."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKING], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tracing_turns_on_when_the_application_uses_opentelemetry() -> None:
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        from pupsourcing import Event, ExpectedVersion
        from pupsourcing.adapters.sqlite import SQLiteStore, connect

        store = SQLiteStore()
        db = connect(":memory:")
        store.create_schema(db)
        with trace.get_tracer("app").start_as_current_span("request") as span:
            placed = Event("S", "A", "a", "E", b"{}")
            result = store.append(db, ExpectedVersion.no_stream(), [placed])
        print(result.events[0].trace_id == format(span.get_span_context().trace_id, "032x"))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_long_running_commands_take_log_format_json() -> None:
    from pupsourcing.cli import build_parser

    parser = build_parser()
    for argv in (
        ["projections", "run", "m:p", "--log-format", "json"],
        ["relay", "nats", "--stream", "S", "--log-format", "json"],
    ):
        assert parser.parse_args(argv).log_format == "json"
    with pytest.raises(SystemExit):
        parser.parse_args(["projections", "run", "m:p", "--log-format", "xml"])


def test_json_log_lines_carry_extras_and_the_traceback() -> None:
    import json
    import logging

    from pupsourcing.cli.console import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("pupsourcing").makeRecord(
            "pupsourcing", logging.ERROR, __file__, 1, "failed at %d", (7,), sys.exc_info(),
            extra={"projection": "orders", "checkpoint": 6},
        )  # fmt: skip
    entry = json.loads(JsonFormatter("p1/2").format(record))
    assert entry["message"] == "failed at 7"
    assert (entry["level"], entry["logger"], entry["tag"]) == ("ERROR", "pupsourcing", "p1/2")
    assert (entry["projection"], entry["checkpoint"]) == ("orders", 6)
    assert entry["exception"].endswith("ValueError: boom")
    assert entry["time"].endswith("Z")


@pytest.mark.parametrize("password", ["Xk7\u00e4pw", 'Xk7"pw', "Xk7\\pw", "Xk7\npw"])
def test_json_log_lines_hide_secrets_that_json_escapes(password: str) -> None:
    """JSON writes a quote, a backslash, a newline or a non-ASCII character
    escaped: the secret must be taken out before encoding, not after."""
    import io
    import json
    import logging
    from urllib.parse import quote

    from pupsourcing.cli.console import Console, setup_logging
    from pupsourcing.urls import parse_url

    url = parse_url(f"postgresql://app:{quote(password, safe='')}@db/shop")
    stream = io.StringIO()
    log = logging.getLogger("pupsourcing")
    saved = (log.handlers[:], log.propagate, log.level)
    try:
        setup_logging(Console(stream), 0, "", url.scrub, "json")
        log.warning("connect failed: %s", f"password '{password}' refused", extra={"pw": password})
    finally:
        log.handlers[:], log.propagate, log.level = saved
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "connect failed: password '***' refused"
    assert entry["pw"] == "***"
    assert "Xk7" not in line


def test_json_log_lines_are_json_whatever_the_extras() -> None:
    """NaN is no JSON, nor a dict keyed by UUIDs: such fields are written as text."""
    import json
    import logging
    import uuid

    from pupsourcing.cli.console import JsonFormatter

    def not_json(name: str) -> None:
        raise AssertionError(f"{name} is no JSON")

    key = uuid.uuid4()
    for extra in ({"rate": float("nan")}, {"by": {key: 1}}):
        record = logging.getLogger("pupsourcing").makeRecord(
            "pupsourcing", logging.INFO, __file__, 1, "m\u00e9\nx", (), None, extra=extra
        )
        line = JsonFormatter().format(record)
        assert "\n" not in line
        entry = json.loads(line, parse_constant=not_json)
        assert entry["message"] == "m\u00e9\nx"
        assert entry == {**entry, **{k: str(v) for k, v in extra.items()}}


def test_json_log_lines_keep_their_own_fields_beside_extras_of_the_same_name() -> None:
    """An ``extra`` named like a field of the line (``time``, ``level``,
    ``logger``, ``tag``, ``exception``) does not replace it: it is kept
    under ``extra_<name>``."""
    import json
    import logging

    from pupsourcing.cli.console import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        extra = {"time": "theirs", "level": 5, "logger": "x", "tag": "t", "exception": "e"}
        record = logging.getLogger("pupsourcing").makeRecord(
            "pupsourcing", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(),
            extra={**extra, "extra_level": 6},
        )  # fmt: skip
    entry = json.loads(JsonFormatter("p1/2").format(record))
    assert entry["time"].endswith("Z")
    assert (entry["level"], entry["logger"], entry["tag"]) == ("ERROR", "pupsourcing", "p1/2")
    assert entry["exception"].endswith("ValueError: boom")
    assert {k: entry[f"extra_{k}"] for k in extra} == extra
    assert entry["extra_extra_level"] == 6  # prefixed again: "extra_level" was taken


def test_json_logs_hold_the_applications_records_and_warnings_too(
    sqlite_db: Backend, tmp_path: Path, running: list[Running]
) -> None:
    """With ``--log-format json`` every line on stderr is JSON: the records
    of the application's own loggers and ``warnings.warn`` too (unless the
    application configured logging itself)."""
    import json

    (tmp_path / "noisy_projection.py").write_text(
        "import logging\n"
        "import warnings\n"
        "log = logging.getLogger('shop.search')\n"
        "class Noisy:\n"
        "    name = 'noisy'\n"
        "    def handle(self, event, tx):\n"
        "        log.warning('odd event at %d', event.global_position)\n"
        "        warnings.warn('old field used', UserWarning, stacklevel=1)\n"
    )
    conn = sqlite_db.connect()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event("a")])
    conn.commit()
    conn.close()
    run = Running(
        "projections", "run", "noisy_projection:Noisy", "--db", sqlite_db.url,
        "--log-format", "json",
        PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
    )  # fmt: skip
    running.append(run)
    run.wait_for_line("old field used")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    entries = [json.loads(line) for line in run.lines]  # every line is JSON
    mine = [e for e in entries if e["logger"] == "shop.search"]
    assert [(e["level"], e["message"]) for e in mine] == [("WARNING", "odd event at 1")]
    warned = [e for e in entries if e["logger"] == "py.warnings"]
    assert len(warned) == 1
    assert "UserWarning: old field used" in warned[0]["message"]
