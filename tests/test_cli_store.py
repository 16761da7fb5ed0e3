"""The command line against real databases: migrate, projections status and
reset, events tail, stream show, and every way of naming a database wrongly."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import assert_one_line_error, cli, cli_argv, cli_env, cli_process, execute
from conftest import Backend
from helpers import event, events
from pupsourcing import Event, ExpectedVersion
from pupsourcing.migrations import generate_sql
from pupsourcing.store import Horizon, StoreConfig

SERVERS = ["postgres", "mysql"]
"""The CLI opens its own connections (PyMySQL for ``mysql://``)."""

OLD_CHECKPOINT = {
    "sqlite": "UPDATE projection_checkpoints SET updated_at = "
    "strftime('%Y-%m-%d %H:%M:%f', 'now', '-2 hours') WHERE projection_name = 'orders'",
    "postgres": "UPDATE projection_checkpoints SET updated_at = now() - interval '2 hours' "
    "WHERE projection_name = 'orders'",
    "mysql": "UPDATE projection_checkpoints SET updated_at = NOW(6) - INTERVAL 2 HOUR "
    "WHERE projection_name = 'orders'",
}


def append(backend: Backend, batch: list[Event], expected: ExpectedVersion | None = None) -> None:
    conn = backend.connect()
    try:
        backend.store.append(conn, expected or ExpectedVersion.any(), batch)
        conn.commit()
    finally:
        conn.close()


def set_checkpoints(backend: Backend, **positions: int) -> None:
    conn = backend.connect()
    try:
        for name, position in positions.items():
            backend.store.update_checkpoint(conn, name, position)
        conn.commit()
    finally:
        conn.close()


# -- migrate -------------------------------------------------------------------------


def test_migrate_applies_the_schema_idempotently_with_custom_tables(backend: Backend) -> None:
    tables = ["--events-table", "ev", "--checkpoints-table", "cp", "--aggregate-heads-table", "hd"]
    first = cli_process("migrate", "--db", backend.url, *tables)  # the real command, once
    assert first.returncode == 0, first.stderr
    assert "tables ev, hd, cp" in first.stdout
    again = cli("migrate", "--db", backend.url, *tables)
    assert again.returncode == 0, again.stderr
    assert backend.scalar("SELECT count(*) FROM ev") == 0
    assert backend.scalar("SELECT count(*) FROM cp") == 0
    status = cli("projections", "status", "--db", backend.url, *tables)
    assert status.returncode == 0, status.stderr
    assert "store head: 0" in status.stdout


def test_migrate_reads_the_environment_and_the_flag_wins(tmp_path: Path) -> None:
    from_env = cli("migrate", cwd=tmp_path, PUPSOURCING_DB="sqlite:///from-env.db")
    assert from_env.returncode == 0, from_env.stderr
    assert (tmp_path / "from-env.db").exists()

    flag_wins = cli(
        "migrate", "--db", "sqlite:///flag.db", cwd=tmp_path, PUPSOURCING_DB="sqlite:///no.db"
    )
    assert flag_wins.returncode == 0, flag_wins.stderr
    assert (tmp_path / "flag.db").exists()
    assert not (tmp_path / "no.db").exists()


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("postgresql://nobody:hunter2@127.0.0.1:1/nowhere", "postgres"),
        ("mysql://nobody:hunter2@127.0.0.1:1/nowhere", "mysql"),
        ("sqlite:///missing/dir/x.db", "sqlite"),
    ],
)
def test_migrate_dry_run_prints_the_schema_without_connecting(
    url: str, adapter: str, tmp_path: Path
) -> None:
    result = cli("migrate", "--dry-run", "--db", url, "--events-table", "ev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == generate_sql(adapter, StoreConfig(events_table="ev"))
    assert not (tmp_path / "missing").exists()


# -- projections status ------------------------------------------------------------------


def test_status_table_groups_partitions_with_lag_and_age(backend: Backend) -> None:
    append(backend, events(10))
    set_checkpoints(backend, orders=10, search_p0=4, search_p1=7, billing=3)
    conn = backend.connect()
    execute(conn, OLD_CHECKPOINT[backend.name])
    conn.commit()
    conn.close()

    result = cli("projections", "status", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("store head: 10 in ")
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert rows[0] == ["PROJECTION", "POSITION", "LAG", "LAST UPDATE"]
    by_name = {row[0]: row[1:] for row in rows[1:]}
    assert by_name["billing"][:2] == ["3", "7"]
    assert by_name["orders"][:2] == ["10", "0"]
    assert re.fullmatch(r"(1h59m|2h00m) ago", by_name["orders"][2]), by_name["orders"]
    assert re.fullmatch(r"\d+s ago", by_name["billing"][2])
    assert by_name["search (2 checkpoints)"][:2] == ["4", "6"]
    assert by_name["search_p0"][:2] == ["4", "6"]
    assert by_name["search_p1"][:2] == ["7", "3"]
    # partitions are listed right under their projection, indented
    index = lines.index(next(line for line in lines if line.startswith("search (2")))
    assert lines[index + 1].startswith("  search_p0")
    assert lines[index + 2].startswith("  search_p1")


def test_status_json(backend: Backend) -> None:
    append(backend, events(5))
    set_checkpoints(backend, orders=5, search_p1=2, search_p0=1)
    result = cli("projections", "status", "--json", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["head"] == 5
    projections = {p["name"]: p for p in report["projections"]}
    assert list(projections) == ["orders", "search"]
    search = projections["search"]
    assert (search["position"], search["lag"], search["partitioned"]) == (1, 4, True)
    assert [
        (c["checkpoint"], c["partition_key"], c["position"], c["lag"])
        for c in search["checkpoints"]
    ] == [("search_p0", 0, 1, 4), ("search_p1", 1, 2, 3)]
    orders = projections["orders"]["checkpoints"][0]
    assert (orders["partition_key"], orders["lag"]) == (None, 0)
    assert 0 <= orders["age_seconds"] < 60
    assert orders["updated_at"].endswith("+00:00")


def test_status_of_a_store_without_checkpoints(backend: Backend) -> None:
    result = cli("projections", "status", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    assert "store head: 0" in result.stdout
    assert "no projection checkpoints yet" in result.stdout
    as_json = json.loads(cli("projections", "status", "--json", "--db", backend.url).stdout)
    assert as_json["head"] == 0
    assert as_json["projections"] == []


# -- projections reset -------------------------------------------------------------------


def test_reset_asks_and_resets_every_partition(backend: Backend) -> None:
    append(backend, events(8))
    set_checkpoints(backend, search_p0=8, search_p1=6, searching=5, orders=8)

    for answer in ("n\n", "", "yes please\n"):
        declined = cli("projections", "reset", "search", "--db", backend.url, input=answer)
        assert declined.returncode == 1
        question, error = declined.stderr.splitlines()
        assert question.startswith("Reset search_p0 at 8, search_p1 at 6 to position 0? ")
        assert question.rstrip().endswith("[y/N]")
        assert error.endswith("error: not confirmed; nothing changed (--yes skips the question)")
    assert backend.checkpoints()["search_p0"] == 8

    confirmed = cli_process(  # the real command, its stdin a pipe
        "projections", "reset", "search", "--to", "2", "--db", backend.url, input="y\n"
    )
    assert confirmed.returncode == 0, confirmed.stderr
    assert "reset search_p0, search_p1 to position 2" in confirmed.stdout
    assert backend.checkpoints() == {"search_p0": 2, "search_p1": 2, "searching": 5, "orders": 8}

    skipped = cli("projections", "reset", "orders", "--yes", "--db", backend.url)
    assert skipped.returncode == 0, skipped.stderr
    assert backend.checkpoints()["orders"] == 0


def test_reset_refuses_unknown_names_and_positions_beyond_the_head(backend: Backend) -> None:
    append(backend, events(3))
    set_checkpoints(backend, orders=3, search_p0=1)
    unknown = cli("projections", "reset", "order", "--yes", "--db", backend.url)
    assert_one_line_error(unknown, "no checkpoint for projection 'order'", "orders, search")
    beyond = cli("projections", "reset", "orders", "--to", "4", "--yes", "--db", backend.url)
    assert_one_line_error(beyond, "beyond the store head 3")
    negative = cli("projections", "reset", "orders", "--to", "-1", "--yes", "--db", backend.url)
    assert negative.returncode == 2
    assert backend.checkpoints() == {"orders": 3, "search_p0": 1}


# -- events tail / stream show -------------------------------------------------------------


def _mixed_events() -> list[Event]:
    return [
        event("agg-1", "Placed", data={"customer": "ada", "items": [1, 2]}),
        Event(
            "Shop",
            "Order",
            "agg-1",
            "Noted",
            b"plain words",
            metadata=b'{"user":"grace"}',
            correlation_id="corr-7",
        ),
        Event("Shop", "Order", "agg-1", "Scanned", bytes(range(250, 256)) + b"\x00" * 40),
    ]


def test_events_tail_renders_json_text_and_binary(backend: Backend) -> None:
    append(backend, events(3, "other"))
    append(backend, _mixed_events())
    result = cli("events", "tail", "-n", "3", "--format", "full", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Shop/Order/other" not in out
    headers = [line for line in out.splitlines() if line.startswith("#")]
    assert [h.split()[0] for h in headers] == ["#4", "#5", "#6"]
    assert "Shop/Order/agg-1  v1  Placed (event version 1)" in headers[0]
    assert '    {\n      "customer": "ada",\n      "items": [\n        1,' in out
    assert "  payload (text): plain words" in out
    assert '  metadata:\n    {\n      "user": "grace"\n    }' in out
    assert out.count("metadata") == 1  # the default {} is not shown
    assert "correlation_id corr-7" in out
    assert "  payload (binary, 46 bytes): fa fb fc fd fe ff 00 00" in out
    assert out.rstrip().endswith("...")


def test_events_tail_json_lines(backend: Backend) -> None:
    append(backend, _mixed_events())
    result = cli("events", "tail", "--json", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    placed, noted, scanned = (json.loads(line) for line in result.stdout.splitlines())
    assert placed["payload"] == {"customer": "ada", "items": [1, 2]}
    assert placed["metadata"] == {}
    assert (placed["global_position"], placed["aggregate_version"]) == (1, 1)
    assert noted["payload_base64"] == "cGxhaW4gd29yZHM="
    assert noted["metadata"] == {"user": "grace"}
    assert noted["correlation_id"] == "corr-7"
    assert scanned["payload_base64"].startswith("+vv8/f7/AAAA")
    assert "payload" not in scanned


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_stays_json_with_nan_and_infinity_payloads(backend: Backend) -> None:
    """Python's json reads NaN and Infinity, which are not JSON: such a
    payload is not JSON, so it is given as base64."""
    append(backend, [Event("Shop", "Order", "nan", "Odd", b'{"x": NaN}')])
    tail = cli("events", "tail", "--json", "--db", backend.url)
    assert tail.returncode == 0, tail.stderr
    [line] = tail.stdout.splitlines()
    document = _strict_json(line)
    assert document["payload_base64"] == "eyJ4IjogTmFOfQ=="
    show = cli("stream", "show", "Shop", "Order", "nan", "--json", "--db", backend.url)
    assert show.returncode == 0, show.stderr
    _strict_json(show.stdout)
    full = cli("events", "tail", "--format", "full", "--db", backend.url)
    assert '  payload (text): {"x": NaN}' in full.stdout


@pytest.mark.parametrize(
    "payload",
    [b'{"x": 1e400}', b"[-1e999]", b'{"a": 1, "a": 2}', b'{"amount": 12345678901234567.89}'],
    ids=["overflow", "negative-overflow", "duplicate-key", "more-digits-than-a-float"],
)
def test_json_python_cannot_give_back_as_stored_is_not_reshaped(
    backend: Backend, payload: bytes
) -> None:
    """Python reads these as something else (Infinity, which is not JSON; the
    last of two values; a rounded number): printed from what Python read,
    the output would be invalid JSON or show a value that is not stored.
    They are shown as stored: as text, and in --json as base64."""
    append(backend, [Event("Shop", "Order", "odd", "Odd", payload, metadata=payload)])
    tail = cli("events", "tail", "--json", "--db", backend.url)
    assert tail.returncode == 0, tail.stderr
    [line] = tail.stdout.splitlines()
    document = _strict_json(line)
    assert base64.b64decode(document["payload_base64"]) == payload
    assert base64.b64decode(document["metadata_base64"]) == payload
    show = cli("stream", "show", "Shop", "Order", "odd", "--json", "--db", backend.url)
    assert show.returncode == 0, show.stderr
    _strict_json(show.stdout)
    full = cli("events", "tail", "--format", "full", "--db", backend.url)
    assert f"  payload (text): {payload.decode()}" in full.stdout


def test_json_numbers_python_reads_exactly_stay_json(backend: Backend) -> None:
    big = 123456789012345678901234567890
    payload = b'{"p": 0.1, "q": 2.50, "r": 1E3, "big": %d}' % big
    append(backend, [Event("Shop", "Order", "n", "Priced", payload)])
    tail = cli("events", "tail", "--json", "--db", backend.url)
    assert tail.returncode == 0, tail.stderr
    document = _strict_json(tail.stdout)
    assert document["payload"] == {"p": 0.1, "q": 2.5, "r": 1000.0, "big": big}


def test_a_payload_nested_too_deeply_for_python_is_shown_as_text(backend: Backend) -> None:
    deep = b"[" * 30_000 + b"]" * 30_000  # deeper than the recursion limit
    append(backend, [Event("Shop", "Order", "deep", "Deep", deep)])
    full = cli("events", "tail", "--format", "full", "--db", backend.url)
    assert full.returncode == 0, full.stderr
    assert "  payload (text): [[[" in full.stdout
    tail = cli("events", "tail", "--json", "--db", backend.url)
    assert tail.returncode == 0, tail.stderr
    assert base64.b64decode(json.loads(tail.stdout)["payload_base64"]) == deep


@pytest.mark.parametrize("form", ["line", "full"])
def test_line_breaks_in_stored_names_cannot_fake_lines(backend: Backend, form: str) -> None:
    append(backend, [event("o-1\n#99  1999-01-01 00:00:00+00:00  Shop/Order/x", "Paid\r\nX",
                           correlation_id="c\nfake")])  # fmt: skip
    result = cli("events", "tail", "--format", form, "--db", backend.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.startswith("#99") for line in lines), result.stdout
    assert "Shop/Order/o-1\\n#99  1999-01-01" in lines[0]
    assert "Paid\\r\\nX" in lines[0]
    if form == "full":
        assert "correlation_id c\\nfake" in lines[1]
    else:
        assert len(lines) == 1


def test_status_rows_stay_one_per_checkpoint(backend: Backend) -> None:
    append(backend, events(2))
    set_checkpoints(backend, **{"evil\nfake  9  0  never": 1})
    result = cli("projections", "status", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    assert lines[3].startswith("evil\\nfake  9  0  never"), lines


def test_error_lines_escape_stored_names(backend: Backend) -> None:
    append(backend, events(1))
    set_checkpoints(backend, **{"red\x1b[31m\nfake": 1})
    result = cli("projections", "reset", "nope", "--yes", "--db", backend.url)
    line = assert_one_line_error(result, "known projections: red\\x1b[31m\\nfake")
    assert "\x1b" not in line


@pytest.mark.parametrize("form", ["line", "full"])
def test_events_are_escaped_for_the_terminal(backend: Backend, form: str) -> None:
    append(backend, [event("evil\x1b]0;pwned\x07", "Red\x1b[31m", data={"x": "\x1b[2J"})])
    result = cli("events", "tail", "--format", form, "--db", backend.url)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "evil\\x1b]0;pwned\\x07" in result.stdout
    assert "Red\\x1b[31m" in result.stdout
    if form == "full":
        assert '"\\u001b[2J"' in result.stdout


def test_events_tail_prints_one_line_per_event(backend: Backend) -> None:
    append(backend, _mixed_events())
    result = cli("events", "tail", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    pattern = (
        r"#(\d+)  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d)  Shop/Order/agg-1  v(\d)  (\w+)"
    )
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[3], m[4]) for m in parsed if m] == [
        ("1", "1", "Placed"),
        ("2", "2", "Noted"),
        ("3", "3", "Scanned"),
    ]
    assert "\x1b" not in result.stdout  # a pipe: plain text


def _filter_events(backend: Backend) -> None:
    append(backend, [Event("Shop", "Order", "o-1", "Placed", b"{}")])  # 1
    append(backend, [Event("Shop", "Cart", "c-1", "Placed", b"{}")])  # 2
    append(backend, [Event("Billing", "Invoice", "i-1", "Issued", b"{}")])  # 3
    append(backend, [Event("Shop", "Order", "o-1", "Paid", b"{}")])  # 4
    append(backend, [Event("Shop", "Order", "o-2", "Placed", b"{}")])  # 5


def _positions(result: subprocess.CompletedProcess[str]) -> list[int]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["global_position"] for line in result.stdout.splitlines()]


def test_events_tail_filters(backend: Backend) -> None:
    _filter_events(backend)

    def tail(*args: str) -> list[int]:
        return _positions(cli("events", "tail", "--json", *args, "--db", backend.url))

    assert tail("--type", "Placed") == [1, 2, 5]
    assert tail("--type", "Placed", "-n", "2") == [2, 5]
    assert tail("--type", "Placed", "--type", "Issued") == [1, 2, 3, 5]
    assert tail("--aggregate-type", "Order") == [1, 4, 5]
    assert tail("--context", "Billing") == [3]
    assert tail("--context", "Shop", "--aggregate-type", "Order", "--type", "Placed") == [1, 5]
    assert tail("--since", "3") == [4, 5]  # after position 3
    assert tail("--since", "1", "-n", "2") == [4, 5]  # the latest 2 of those
    assert tail("--since", "2000-01-01") == [1, 2, 3, 4, 5]
    assert tail("--since", "2000-01-01T00:00:00+01:00", "--type", "Paid") == [4]
    assert tail("--since", "2999-01-01") == []
    assert tail("--type", "Nothing") == []
    none = cli("events", "tail", "--type", "Nothing", "--db", backend.url)
    assert none.stdout == ""
    assert "no matching events" in none.stderr


def test_events_tail_since_position_0_is_every_event(backend: Backend) -> None:
    """``--since 0`` (a checkpoint that has handled nothing yet): every event,
    printed, and with ``-f`` before the new ones."""
    _filter_events(backend)
    result = cli("events", "tail", "--json", "--since", "0", "--db", backend.url)
    assert _positions(result) == [1, 2, 3, 4, 5]
    assert result.stderr == ""
    process = _follow(backend.url, "--since", "0")
    lines: list[str] = []
    reader = _read_lines(process, lines)
    try:
        wait_for(lambda: len(lines) >= 5, what="the stored events")
        append(backend, [Event("Shop", "Order", "o-3", "Placed", b"{}")])  # 6
        wait_for(lambda: len(lines) == 6, what="the new event")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    assert [json.loads(line)["global_position"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_events_tail_since_time_finds_events_stored_out_of_time_order(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``created_at`` is the writer's: history imported with its own times
    lands at higher positions than newer events. A whole page older than
    ``--since`` says nothing about the pages below it."""
    from pupsourcing.cli import events as events_cli

    recent = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    append(backend, [event("o-1", "Placed", created_at=recent)])  # 1
    append(backend, [event("legacy", f"Imported{i}", created_at=old) for i in range(5)])  # 2-6
    monkeypatch.setattr(events_cli, "SCAN_PAGE", 2)

    def tail(*args: str) -> list[int]:
        return _positions(cli("events", "tail", "--json", *args, "--db", backend.url))

    assert tail("--since", "2024-01-01") == [1]
    assert tail("--since", "2024-06-01T14:00+02:00") == [1]
    assert tail("--since", "2024-06-01T12:00:00.000001Z") == []
    assert tail("--since", "2019-12-31", "-n", "2") == [5, 6]


def test_events_tail_filters_read_back_past_a_page(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filtered look-back reads page by page; a match far behind the head
    is still found, and with a limit only the newest matches are kept."""
    from pupsourcing.cli import events as events_cli

    append(backend, [Event("Shop", "Order", "o-1", "Placed", b"{}")])
    append(backend, events(7, "noise"))
    append(backend, [Event("Shop", "Order", "o-2", "Placed", b"{}")])
    append(backend, events(3, "noise"))
    monkeypatch.setattr(events_cli, "SCAN_PAGE", 2)
    conn = backend.connect()
    try:
        reads: list[tuple[int, int]] = []

        def read(after: int, count: int) -> list[Any]:
            reads.append((after, count))
            return list(backend.store.read_events(conn, after, count))

        wanted = events_cli.Filter(types=frozenset({"Placed"}))
        found, floor = events_cli.latest_matching(read, 12, wanted, None)
        assert [e.global_position for e in found] == [1, 9]
        assert floor == 0
        reads.clear()
        found, floor = events_cli.latest_matching(read, 12, wanted, 1)
        assert [e.global_position for e in found] == [9]
        assert floor == 8
        assert len(reads) == 2  # stopped once it had one: (10, 12] and (8, 10]
    finally:
        conn.close()


def test_events_tail_follow_with_a_filter(backend: Backend) -> None:
    _filter_events(backend)
    process = _follow(backend.url, "--type", "Placed", "-n", "1")
    lines: list[str] = []
    reader = _read_lines(process, lines)
    try:
        wait_for(lambda: len(lines) == 1, what="the latest matching event")
        append(backend, [Event("Shop", "Order", "o-3", "Paid", b"{}")])  # 6
        append(backend, [Event("Shop", "Order", "o-4", "Placed", b"{}")])  # 7
        wait_for(lambda: len(lines) == 2, what="the new matching event")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    assert [json.loads(line)["global_position"] for line in lines] == [5, 7]


@pytest.mark.parametrize("filters", [(), ("--type", "Placed")], ids=["all", "filtered"])
def test_events_tail_follow_with_no_latest_events_prints_only_new_ones(
    backend: Backend, filters: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-n 0 -f``: none of the events already stored, filtered or not."""
    from pupsourcing.store.base import SQLStore

    _filter_events(backend)
    probe, read = SQLStore.probe_horizon, SQLStore.read_events
    probes = []
    read_up_to = [0]

    def probe_then_append(self: Any, tx: Any) -> Any:
        probes.append(None)
        if len(probes) == 2:
            append(backend, [Event("Shop", "Order", "o-3", "Placed", b"{}")])  # 6
        # Once the new event was read (and so printed), or after a long while:
        # as Ctrl-C, the command stops with 130.
        if read_up_to[0] >= 6 or len(probes) > 2000:
            raise KeyboardInterrupt
        return probe(self, tx)

    def reading(self: Any, tx: Any, after: int, limit: int) -> Any:
        events = read(self, tx, after, limit)
        read_up_to[0] = max([read_up_to[0], *(e.global_position for e in events)])
        return events

    monkeypatch.setattr(SQLStore, "probe_horizon", probe_then_append)
    monkeypatch.setattr(SQLStore, "read_events", reading)
    result = cli("events", "tail", "-n", "0", "-f", "--json", "--interval", "0.01",
                 *filters, "--db", backend.url)  # fmt: skip
    assert result.returncode == 130, result.stderr
    assert [json.loads(line)["global_position"] for line in result.stdout.splitlines()] == [6]


def test_events_tail_refuses_a_bad_since(backend: Backend) -> None:
    result = cli("events", "tail", "--since", "yesterday", "--db", backend.url)
    assert result.returncode == 2
    assert "--since: must be a global position or an ISO 8601 time" in result.stderr


def test_events_tail_since_takes_the_times_people_type(backend: Backend) -> None:
    """``--since`` takes what a user would type or paste: nanoseconds (cut to
    microseconds), a lowercase ``t`` or ``z``, ``+00``, a date alone. What it
    cannot read is a usage error naming the option and the forms it takes."""
    first = datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    append(backend, [event("o-1", "Placed", created_at=first)])  # 1
    append(backend, [event("o-2", "Placed", created_at=first.replace(second=1))])  # 2

    def tail(since: str) -> list[int]:
        return _positions(cli("events", "tail", "--json", "--since", since, "--db", backend.url))

    assert tail("2024-06-01T12:00:00.500000999Z") == [1, 2]
    assert tail("2024-06-01T12:00:00.500000999z") == [1, 2]
    assert tail("2024-06-01T12:00:00.500001z") == [2]
    assert tail("2024-06-01t12:00:00.5+00") == [1, 2]
    assert tail("2024-06-01t14:00:01+02") == [2]
    assert tail("2024-06-01") == [1, 2]
    assert tail("2024-06-02") == []
    for bad in ("yesterday", "²", "2024-06-01T12:00:00 UTC", "2024-06-01T25:00Z", "2024-13-01"):
        result = cli("events", "tail", "--since", bad, "--db", backend.url)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr
        [line] = [x for x in result.stderr.splitlines() if "error" in x]
        assert "argument --since: must be a global position or an ISO 8601 time" in line, line
        assert repr(bad) in line, line


def test_events_tail_of_an_empty_store(backend: Backend) -> None:
    result = cli("events", "tail", "--db", backend.url)
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no events yet" in result.stderr


def test_events_tail_n_0_prints_nothing(backend: Backend) -> None:
    """No events were asked for: none is not news (as ``tail -n 0``)."""
    append(backend, events(2))
    for filters in ((), ("--type", "Nothing")):
        result = cli("events", "tail", "-n", "0", *filters, "--db", backend.url)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_stream_show(backend: Backend) -> None:
    append(backend, events(3, "agg-1"))
    append(backend, events(2, "agg-2"))
    result = cli("stream", "show", "Shop", "Order", "agg-1", "--db", backend.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Shop/Order/agg-1: 3 events, versions 1..3\n")
    one = cli("stream", "show", "Shop", "Order", "agg-2", "--to-version", "1", "--db", backend.url)
    assert one.stdout.startswith("Shop/Order/agg-2: 1 event, versions 1..1\n"), one.stdout
    assert [line.split()[2] for line in result.stdout.splitlines() if line.startswith("#")] == [
        "v1",
        "v2",
        "v3",
    ]
    assert '    {\n      "i": 2\n    }' in result.stdout

    ranged = cli(
        "stream", "show", "Shop", "Order", "agg-1", "--from-version", "2", "--json",
        "--db", backend.url,
    )  # fmt: skip
    assert ranged.returncode == 0, ranged.stderr
    document = json.loads(ranged.stdout)
    assert document["aggregate_id"] == "agg-1"
    assert [e["aggregate_version"] for e in document["events"]] == [2, 3]
    assert [e["payload"] for e in document["events"]] == [{"i": 1}, {"i": 2}]

    missing = cli("stream", "show", "Shop", "Order", "agg-9", "--db", backend.url)
    assert_one_line_error(missing, "no events in stream Shop/Order/agg-9")
    assert missing.stdout == ""


def test_counts_and_versions_beyond_a_bigint_mean_all(backend: Backend) -> None:
    """As ``tail -n`` with a huge number: every event, not a database error."""
    append(backend, events(3, "agg-1"))
    huge = str(2**70)
    tail = cli("events", "tail", "--json", "-n", huge, "--db", backend.url)
    assert _positions(tail) == [1, 2, 3]
    upto = cli("stream", "show", "Shop", "Order", "agg-1", "--json", "--to-version", huge,
               "--db", backend.url)  # fmt: skip
    assert upto.returncode == 0, upto.stderr
    assert len(json.loads(upto.stdout)["events"]) == 3
    beyond = cli("stream", "show", "Shop", "Order", "agg-1", "--from-version", huge,
                 "--db", backend.url)  # fmt: skip
    assert_one_line_error(beyond, "no events in stream Shop/Order/agg-1")


def _follow(url: str, *options: str) -> subprocess.Popen[str]:
    """``events tail -f --json`` with ``options`` on ``url``, polling every
    0.05 s; its stdout and stderr are pipes."""
    return subprocess.Popen(
        cli_argv("events", "tail", "-f", "--json", "--interval", "0.05", *options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(PUPSOURCING_DB=url),
    )


def _read_lines(process: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            into.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_events_tail_follow_prints_new_events_until_a_signal(backend: Backend) -> None:
    append(backend, events(2, "old"))
    process = _follow(backend.url, "-n", "1")
    lines: list[str] = []
    reader = _read_lines(process, lines)
    try:
        wait_for(lambda: len(lines) == 1, what="the latest event")
        append(backend, events(3, "new"))
        wait_for(lambda: len(lines) == 4, what="the new events")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    assert [json.loads(line)["global_position"] for line in lines] == [2, 3, 4, 5]
    assert [json.loads(line)["aggregate_id"] for line in lines[1:]] == ["new"] * 3


@pytest.mark.parametrize("server", SERVERS)
def test_events_tail_follow_waits_for_earlier_open_transactions(
    server: str, make_store_backend: Any
) -> None:
    """A writer holding a lower position commits after a higher one: --follow
    must print both, in position order, never skipping the late one. (SQLite
    has one writer at a time, so its positions always commit in order.)"""
    backend = make_store_backend(server)
    append(backend, events(1, "first"))
    process = _follow(backend.url)
    lines: list[str] = []
    reader = _read_lines(process, lines)
    slow = backend.connect()
    try:
        wait_for(lambda: len(lines) == 1, what="the first event")
        backend.store.append(slow, ExpectedVersion.any(), [event("slow")])  # position 2, open
        append(backend, [event("fast")])  # position 3, committed
        time.sleep(1.0)
        assert len(lines) == 1, "printed past an open transaction's position"
        slow.commit()
        wait_for(lambda: len(lines) == 3, what="both events")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        slow.close()
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    assert [json.loads(line)["aggregate_id"] for line in lines] == ["first", "slow", "fast"]


@pytest.mark.parametrize("server", SERVERS)
def test_events_tail_follow_misses_no_event_committed_during_its_first_read(
    server: str, make_store_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lower position commits right after --follow read the latest events
    and before it looked at the horizon: it must still be printed."""
    from pupsourcing.store.base import SQLStore

    backend = make_store_backend(server)
    append(backend, events(1, "first"))
    slow = backend.connect()
    backend.store.append(slow, ExpectedVersion.any(), [event("slow")])  # position 2, open
    append(backend, [event("fast")])  # position 3, committed
    read_latest, probe = SQLStore.read_latest_events, SQLStore.probe_horizon
    # The command's own horizon, mirrored: once it has passed "fast", the
    # loop reads up to it before it probes again. On MySQL any write
    # transaction on the server (another test's, under xdist) holds the
    # horizon back for a while, so a fixed number of probes is not enough.
    mirror, probes = Horizon(), []

    def read_then_commit(self: Any, tx: Any, limit: int) -> Any:
        found = read_latest(self, tx, limit)
        slow.commit()
        return found

    def probe_until_past_fast(self: Any, tx: Any) -> Any:
        probes.append(None)
        if mirror.safe >= 3 or len(probes) > 600:  # 600 x 0.05 s: 30 s at most
            raise KeyboardInterrupt  # as Ctrl-C: the command stops with 130
        found = probe(self, tx)
        mirror.observe(found)
        return found

    monkeypatch.setattr(SQLStore, "read_latest_events", read_then_commit)
    monkeypatch.setattr(SQLStore, "probe_horizon", probe_until_past_fast)
    try:
        result = cli("events", "tail", "-f", "--json", "--interval", "0.05", "--db", backend.url)
    finally:
        slow.close()
    assert result.returncode == 130, result.stderr
    ids = [json.loads(line)["aggregate_id"] for line in result.stdout.splitlines()]
    assert ids == ["first", "slow", "fast"]


# -- naming a database wrongly ---------------------------------------------------------------

COMMANDS = [
    ("migrate",),
    ("projections", "status"),
    ("projections", "reset", "x", "--yes"),
    ("projections", "run", "cli_projections:Recorder"),
    ("events", "tail"),
    ("stream", "show", "A", "B", "C"),
]


@pytest.mark.parametrize(
    "command", [*COMMANDS, ("migrate", "--dry-run")], ids=lambda c: " ".join(c[:2])
)
def test_every_command_but_demo_needs_a_database(command: tuple[str, ...], tmp_path: Path) -> None:
    """No silent fallback to the demo's file: a usage error (2) saying how to
    name a database, and nothing created."""
    for env in ({}, {"PUPSOURCING_DB": ""}):
        result = cli(*command, cwd=tmp_path, **env)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stdout == ""
        assert "--db URL" in result.stderr
        assert "PUPSOURCING_DB" in result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_reports_a_bad_url_in_one_line(command: tuple[str, ...]) -> None:
    result = cli(*command, "--db", "user:hunter2@db/shop")
    line = assert_one_line_error(result, "bad database URL", "not a database URL")
    assert "hunter2" not in line
    from_env = cli_process(*command, PUPSOURCING_DB="oracle://db/x")  # the real command
    assert_one_line_error(from_env, "unknown database URL scheme 'oracle'")


@pytest.mark.parametrize("command", COMMANDS[1:], ids=lambda c: " ".join(c[:2]))
def test_every_command_reports_an_unreachable_server_in_one_line(
    command: tuple[str, ...],
) -> None:
    result = cli(*command, "--db", "postgresql://postgres:hunter2@127.0.0.1:1/test")
    line = assert_one_line_error(
        result, "cannot connect to postgresql://postgres:***@127.0.0.1:1/test", "refused"
    )
    assert "hunter2" not in result.stderr
    assert line.startswith(f"pupsourcing {' '.join(command[:2])}: error:")


def test_unknown_postgres_role_and_database(make_store_backend: Any) -> None:
    backend = make_store_backend("postgres")
    role = backend.url.replace("postgresql://postgres", "postgresql://no_such_role_7", 1)
    assert_one_line_error(
        cli("projections", "status", "--db", role), 'role "no_such_role_7" does not exist'
    )
    database = re.sub(r"/\w+\?", "/no_such_db_7?", backend.url)
    assert database != backend.url
    assert_one_line_error(
        cli("events", "tail", "--db", database), 'database "no_such_db_7" does not exist'
    )


def test_mysql_wrong_password_unknown_database_and_unreachable_server(
    make_store_backend: Any,
) -> None:
    backend = make_store_backend("mysql")
    wrong = backend.url.replace("mysql://root@", "mysql://root:hunter2@", 1)
    assert wrong != backend.url
    result = cli("projections", "status", "--db", wrong)
    assert_one_line_error(
        result, "cannot connect to mysql://root:***@", "Access denied for user 'root'"
    )
    assert "hunter2" not in result.stderr
    unknown = re.sub(r"/t_[0-9a-f]+$", "/no_such_db_7", backend.url)
    assert unknown != backend.url
    assert_one_line_error(cli("events", "tail", "--db", unknown), "Unknown database 'no_such_db_7'")
    unreachable = cli("stream", "show", "A", "B", "C", "--db", "mysql://root@127.0.0.1:1/test")
    assert_one_line_error(unreachable, "Can't connect to MySQL server", "Connection refused")


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    for command in COMMANDS[1:]:
        result = cli(*command, "--db", "sqlite:///absent.db", cwd=tmp_path)
        assert_one_line_error(result, "no SQLite database at absent.db", "pupsourcing migrate")
    assert not (tmp_path / "absent.db").exists()


def test_missing_tables_point_to_migrate(backend: Backend) -> None:
    for command in COMMANDS[1:]:
        result = cli(*command, "--db", backend.url, "--events-table", "not_migrated")
        assert_one_line_error(result, "run `pupsourcing migrate`")


def test_bad_table_names(backend: Backend) -> None:
    result = cli("projections", "status", "--db", backend.url, "--events-table", "ev; DROP")
    assert result.returncode == 2, result.stderr  # a usage error, naming the flag
    assert "argument --events-table: events_table: 'ev; DROP' is not a valid table name" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_demo_accepts_a_sqlite_url_and_refuses_servers(tmp_path: Path) -> None:
    ok = cli("demo", "--db", "sqlite:///via-url.db", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "via-url.db").exists()
    status = cli("projections", "status", "--db", "sqlite:///via-url.db", cwd=tmp_path)
    assert "demo_orders" in status.stdout
    server = cli("demo", "--db", "postgresql://postgres@127.0.0.1/test", cwd=tmp_path)
    assert_one_line_error(server, "SQLite")


# -- events tail -f across a database restart ------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_events_tail_follow_rides_out_a_database_restart(
    server: str, request: pytest.FixtureRequest
) -> None:
    """The database restarts while -f runs: it says it lost the connection,
    keeps trying with back-off and goes on after the last event it printed,
    every event once and in order: those committed before the outage but not
    yet printed, those committed while it still waits to reconnect, and the
    later ones. (SQLite has no connection to lose.)"""
    from conftest import close_backend, private_backend

    private = request.getfixturevalue(
        "private_postgres" if server == "postgres" else "private_mariadb"
    )
    backend = private_backend(private)
    process = _follow(backend.url)
    lines: list[str] = []
    errors: list[str] = []
    reader = _read_lines(process, lines)
    assert process.stderr is not None
    error_reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    try:
        append(backend, events(3, "before"))
        wait_for(lambda: len(lines) == 3, what="the first events")
        append(backend, events(2, "unprinted"))  # perhaps not printed before the outage
        error_reader.start()
        private.stop()
        wait_for(
            lambda: "reconnecting" in "".join(errors) or process.poll() is not None,
            what="a reconnect line",
        )
        time.sleep(1.6)  # it keeps trying, further and further apart
        assert process.poll() is None, errors
        private.start()
        append(backend, events(2, "while-reconnecting"))
        wait_for(lambda: len(lines) == 7, timeout=60, what="the events after the restart")
        append(backend, events(3, "after"))
        wait_for(lambda: len(lines) == 10, what="the later events")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, errors
    finally:
        private.ensure_started()
        if process.poll() is None:
            process.kill()
        close_backend(backend)
    reader.join(timeout=5)
    error_reader.join(timeout=5)
    printed = [json.loads(line) for line in lines]
    assert [e["global_position"] for e in printed] == list(range(1, 11))
    assert [e["aggregate_id"] for e in printed] == (
        ["before"] * 3 + ["unprinted"] * 2 + ["while-reconnecting"] * 2 + ["after"] * 3
    )
    text = "".join(errors)
    # The processors' reconnect: the loss an ERROR, attempts that fail again
    # DEBUG (a WARNING each minute), the reconnect INFO.
    assert "events tail lost its connection" in text
    assert "reconnecting in 0.1s" in text
    assert "events tail reconnected after" in text
    assert "Traceback" not in text


def test_events_tail_follow_stops_at_once_on_a_signal_while_reconnecting(
    private_postgres: Any,
) -> None:
    """SIGINT while -f waits to reconnect stops it at once, as while it
    waits for new events, however long the wait it is in."""
    from conftest import close_backend, private_backend

    backend = private_backend(private_postgres)
    append(backend, events(1, "first"))
    process = _follow(backend.url)
    lines: list[str] = []
    _read_lines(process, lines)
    errors: list[str] = []
    assert process.stderr is not None
    stream = process.stderr
    threading.Thread(target=lambda: errors.extend(stream), daemon=True).start()
    try:
        wait_for(lambda: len(lines) == 1, what="the first event")
        private_postgres.stop()
        wait_for(
            lambda: "reconnecting" in "".join(errors) or process.poll() is not None,
            what="a reconnect line",
        )
        # Waits of 0.1, 0.2, 0.4, 0.8 and 1.6 s (a stopped local server
        # refuses at once): by now it is in the 1.6 s or the 3.2 s one.
        time.sleep(2.5)
        assert process.poll() is None, errors
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, errors
        assert time.monotonic() - started < 1.0
    finally:
        private_postgres.ensure_started()
        if process.poll() is None:
            process.kill()
        close_backend(backend)
    assert "Traceback" not in "".join(errors)


def test_events_tail_follow_ends_with_one_line_when_reconnecting_is_refused(
    make_store_backend: Any,
) -> None:
    """A lost connection is retried; a refused login on reconnecting is no
    lost connection: the command ends with one line, without the password."""
    import uuid

    from conftest import MYSQL_HOST, mysql_admin

    backend = make_store_backend("mysql")
    append(backend, events(1, "first"))
    database = backend.scalar("SELECT DATABASE()")
    user = f"tail_{uuid.uuid4().hex[:12]}"
    admin = mysql_admin()
    cursor = admin.cursor()
    cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'sEcr3t-pw'")
    try:
        cursor.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
        cursor.execute(f"GRANT PROCESS ON *.* TO '{user}'@'%'")
        url = f"mysql://{user}:sEcr3t-pw@{MYSQL_HOST}:3306/{database}"
        process = _follow(url)
        lines: list[str] = []
        _read_lines(process, lines)
        try:
            wait_for(lambda: len(lines) == 1, what="the first event")
            cursor.execute(f"DROP USER '{user}'@'%'")
            cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (user,))
            for (session,) in cursor.fetchall():
                cursor.execute(f"KILL CONNECTION {int(session)}")
            status = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.stderr is not None
        stderr = process.stderr.read()
    finally:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()
    assert status == 1, stderr
    assert "Traceback" not in stderr
    assert "sEcr3t-pw" not in stderr
    reported = stderr.strip().splitlines()
    assert "events tail lost its connection" in reported[0]
    last = reported[-1]
    assert last.startswith("pupsourcing events tail: error: cannot reconnect to mysql://"), last
    assert "Access denied" in last


@pytest.mark.parametrize("server", ["sqlite", *SERVERS])
def test_events_tail_follow_ends_with_one_line_when_the_table_is_dropped(
    server: str, make_store_backend: Any
) -> None:
    """An error that is no lost connection is not retried: one line, exit 1."""
    backend = make_store_backend(server)
    append(backend, events(1, "first"))
    process = _follow(backend.url)
    lines: list[str] = []
    _read_lines(process, lines)
    try:
        wait_for(lambda: len(lines) == 1, what="the first event")
        conn = backend.connect()
        try:
            execute(conn, "DROP TABLE events")
            conn.commit()
        finally:
            conn.close()
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stderr is not None
    result = subprocess.CompletedProcess(process.args, status, "", process.stderr.read())
    assert_one_line_error(result, "pupsourcing events tail: error: database error:")


def test_events_tail_follow_into_a_closed_pipe_ends_quietly(make_store_backend: Any) -> None:
    """``events tail -f | head -n 1``: once head is gone, the next event
    printed ends the command quietly (141), as Unix tools do."""
    backend = make_store_backend("sqlite")
    append(backend, events(1, "first"))
    process = _follow(backend.url)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["aggregate_id"] == "first"
        process.stdout.close()
        append(backend, events(2, "next"))
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stderr is not None
    assert (status, process.stderr.read()) == (141, "")


# -- a lost connection while a command reads ------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("command", [("events", "tail"), ("stream", "show", "Shop", "Order", "a")])
def test_a_connection_lost_during_the_first_read_is_one_line(
    server: str, command: tuple[str, ...], request: pytest.FixtureRequest
) -> None:
    """The server goes away while a command (without -f) waits for its first
    read (held back by a lock): the command ends with exit status 1 and one
    line giving the driver's reason, no traceback (not retried: only -f
    reconnects)."""
    from conftest import close_backend, private_backend

    private = request.getfixturevalue(
        "private_postgres" if server == "postgres" else "private_mariadb"
    )
    backend = private_backend(private)
    append(backend, [Event("Shop", "Order", "a", "Placed", b"{}")])
    locker = backend.connect()
    try:
        if server == "postgres":
            execute(locker, "LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        else:
            execute(locker, "LOCK TABLES events WRITE")
        process = subprocess.Popen(
            cli_argv(*command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(PUPSOURCING_DB=backend.url),
        )
        try:
            time.sleep(1.5)  # connected, waiting for the lock
            assert process.poll() is None, process.communicate()
            private.stop()
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        private.ensure_started()
        with contextlib.suppress(Exception):
            locker.close()
        close_backend(backend)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    name = " ".join(command[:2])
    lost = "terminating connection" if server == "postgres" else "Lost connection to MySQL"
    assert_one_line_error(result, f"pupsourcing {name}: error: database error: ", lost)
    assert stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ("projections", "reset", "fixable", "--yes", "--force"),
        ("projections", "replay-dead-letters", "cli_projections:Fixable"),
        ("migrate",),
    ],
    ids=["reset", "replay-dead-letters", "migrate"],
)
def test_sqlite_commands_that_write_wait_for_the_write_lock(
    command: tuple[str, ...], sqlite_db: Backend
) -> None:
    """Another connection holds SQLite's write lock and commits a write
    1.5 s later, as a worker's batch does: each command that writes (a
    process of its own) waits for the lock, within the busy timeout of 5 s,
    and goes through. One that read in the transaction it then writes in
    would fail at once: SQLite does not let a transaction whose snapshot
    another connection's commit made stale wait for the lock."""
    import cli_projections
    from pupsourcing.projection import ProcessorConfig

    conn = sqlite_db.connection()
    execute(conn, cli_projections.CREATE_TABLE)
    for aggregate in ("a-1", "poison"):
        sqlite_db.store.append(conn, ExpectedVersion.any(), [event(aggregate)])
    conn.execute(f"DROP TABLE {sqlite_db.store.config.leases_table}")  # for migrate to make
    conn.commit()
    config = ProcessorConfig(max_attempts=1, on_failure="dead_letter")
    with sqlite_db.Processor(sqlite_db.connect, sqlite_db.store, config) as processor:
        assert processor.catch_up(cli_projections.Fixable()) == 1  # (one dead letter)
    conn.execute("BEGIN IMMEDIATE")
    sqlite_db.store.update_checkpoint(conn, "other", 1)
    process = subprocess.Popen(
        cli_argv(*command, "--db", sqlite_db.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(POISON_FIXED="1"),
    )
    try:
        time.sleep(1.5)  # (the command started and waits for the lock)
    finally:
        conn.commit()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    if command[0] == "migrate":
        assert sqlite_db.scalar(f"SELECT count(*) FROM {sqlite_db.store.config.leases_table}") == 0
    elif command[1] == "reset":
        assert sqlite_db.checkpoints()["fixable"] == 0
    else:
        assert out.strip() == "replayed 1 of 1 dead letters of fixable"
