"""How the command line writes for people: rich (colour, drawn tables,
progress bars) on a terminal when rich is installed, plain text on a pipe,
with ``NO_COLOR`` or ``TERM=dumb``, or without rich; counts with the right
noun form."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

import pupsourcing.cli
from cli_helpers import cli, cli_argv, cli_env, cli_process
from conftest import Backend, require
from helpers import event, events
from pupsourcing import ExpectedVersion
from pupsourcing._text import plural
from pupsourcing.cli import _output
from pupsourcing.cli.console import Console
from pupsourcing.cli.progress import ProgressMonitor, Snapshot
from pupsourcing.urls import database

ESC = "\x1b["


@pytest.fixture
def no_colour_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)


def test_plural() -> None:
    assert plural(1, "event") == "1 event"
    assert plural(0, "event") == "0 events"
    assert plural(2, "event") == "2 events"
    assert plural(1, "new event") == "1 new event"
    assert plural(3, "class", "classes") == "3 classes"
    assert plural(1, "class", "classes") == "1 class"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("no_colour_env")
def test_colour_follows_the_terminal_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require("rich")
    assert not _output.wants_color(io.StringIO())
    assert _output.wants_color(_Terminal())
    assert _output.rich_for(_Terminal()) is not None
    assert _output.rich_for(io.StringIO()) is None
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert _output.rich_for(io.StringIO()) is not None
    monkeypatch.setenv("NO_COLOR", "1")  # NO_COLOR wins
    assert _output.rich_for(_Terminal()) is None
    monkeypatch.setenv("NO_COLOR", "")  # empty: not set
    assert _output.rich_for(_Terminal()) is not None
    monkeypatch.setenv("TERM", "dumb")
    assert _output.rich_for(_Terminal()) is None


@pytest.mark.usefixtures("no_colour_env")
def test_without_rich_output_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.delitem(sys.modules, "pupsourcing.cli._rich", raising=False)
    monkeypatch.delattr(pupsourcing.cli, "_rich", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert _output.rich_for(_Terminal()) is None
    table = _output.Table(("NAME", "N"), right=(1,))
    table.add("a", "1")
    out = _Terminal()
    table.print(out)
    assert out.getvalue() == "NAME  N\na     1\n"


def test_plain_table_aligns_columns() -> None:
    table = _output.Table(("PROJECTION", "POSITION", "LAST UPDATE"), right=(1,))
    table.add("orders", "1,204", "3s ago")
    table.add("  orders_p0", "9", "never")
    assert table.plain().splitlines() == [
        "PROJECTION   POSITION  LAST UPDATE",
        "orders          1,204  3s ago",
        "  orders_p0         9  never",
    ]
    with pytest.raises(ValueError, match="a row needs 3 cells, got 2"):
        table.add("x", "y")


@pytest.mark.usefixtures("no_colour_env")
def test_rich_table_and_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    require("rich")
    table = _output.Table(("PROJECTION", "POSITION"), right=(1,))
    table.add("orders", "1,204")
    out = _Terminal()
    table.print(out)
    text = out.getvalue()
    assert ESC in text
    assert "─" in text  # the rule under the header
    assert "orders" in text
    assert "1,204" in text

    renderer = _output.rich_for(_Terminal())
    assert renderer is not None
    halfway = Snapshot("orders", 50, 100, 10.0)
    done = Snapshot("search", 100, 100, None)
    rows = [(s.name, s.fraction, s.counts(), s.status(), s.caught_up) for s in (halfway, done)]
    wide = [_strip(line) for line in renderer.bars(rows, 200)]
    assert len(wide) == 2
    assert re.fullmatch(r"orders [━╸╺ ]{24}  50\.0%  50/100 10 events/s, ETA 5s *", wide[0]), wide
    assert re.fullmatch(r"search ━{24} 100\.0% 100/100 caught up *", wide[1]), wide
    narrow = [_strip(line) for line in renderer.bars(rows, 50)]
    assert all(len(line) <= 50 for line in narrow), narrow
    assert "50.0%  50/100" in narrow[0]  # the numbers keep their width; the rate is cut
    assert "…" in narrow[0]


def _strip(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# -- the commands ----------------------------------------------------------------------


def _store_with_a_checkpoint(backend: Backend) -> None:
    conn = backend.connect()
    try:
        backend.store.append(conn, ExpectedVersion.any(), events(3, "agg-1"))
        backend.store.update_checkpoint(conn, "orders_p0", 2)
        conn.commit()
    finally:
        conn.close()


def test_progress_lines_say_caught_up_at_each_new_position(
    sqlite_db: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Off a terminal, "caught up" is logged once per position: also when
    the new events were handled between two samples, none of which saw the
    projection behind (it stayed silent at the old position)."""
    monitor = ProgressMonitor(
        database(sqlite_db.url), {"orders": ["orders"]}, Console(io.StringIO())
    )
    conn = sqlite_db.connect()

    def handled_up_to(position: int, appended: int) -> None:
        sqlite_db.store.append(conn, ExpectedVersion.any(), events(appended, f"agg-{position}"))
        sqlite_db.store.update_checkpoint(conn, "orders", position)
        conn.commit()

    try:
        with caplog.at_level("INFO", logger="pupsourcing.cli.progress"):
            handled_up_to(3, 3)
            monitor.tick()
            monitor.tick()
            handled_up_to(5, 2)
            monitor.tick()
    finally:
        monitor.close()
        conn.close()
    assert caplog.messages == [
        "orders: caught up at position 3",
        "orders: caught up at position 5",
    ]


def _on_a_terminal(argv: list[str], **env: str) -> str:
    """Run a command with stdout on a pseudo-terminal; its output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**cli_env(**env), "TERM": env.get("TERM", "xterm-256color")},
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 0.2)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # closed: the command exited
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return output.decode()


def test_status_is_plain_on_a_pipe_and_with_no_color(sqlite_db: Backend) -> None:
    _store_with_a_checkpoint(sqlite_db)
    piped = cli("projections", "status", "--db", sqlite_db.url, NO_COLOR="", FORCE_COLOR="")
    assert piped.returncode == 0, piped.stderr
    assert ESC not in piped.stdout
    assert "orders (1 checkpoint)" in piped.stdout
    assert re.search(r"^PROJECTION +POSITION  LAG  LAST UPDATE$", piped.stdout, re.M)

    argv = cli_argv("projections", "status", "--db", sqlite_db.url)
    for env in ({"NO_COLOR": "1"}, {"TERM": "dumb"}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}):
        text = _on_a_terminal(argv, **{"NO_COLOR": "", "FORCE_COLOR": "", **env})
        assert ESC not in text, env
        assert "PROJECTION" in text


def test_status_is_a_rich_table_on_a_terminal_or_with_force_color(sqlite_db: Backend) -> None:
    require("rich")
    _store_with_a_checkpoint(sqlite_db)
    argv = cli_argv("projections", "status", "--db", sqlite_db.url)
    on_terminal = _on_a_terminal(argv, NO_COLOR="", FORCE_COLOR="")
    forced = cli("projections", "status", "--db", sqlite_db.url, NO_COLOR="", FORCE_COLOR="1")
    assert forced.returncode == 0, forced.stderr
    for text in (on_terminal, forced.stdout):
        assert f"{ESC}1m" in text  # a bold header
        assert "─" in text
        assert "orders (1 checkpoint)" in _strip(text)


def test_events_tail_in_colour(sqlite_db: Backend) -> None:
    require("rich")
    _store_with_a_checkpoint(sqlite_db)
    forced = cli("events", "tail", "-n", "1", "--db", sqlite_db.url, NO_COLOR="", FORCE_COLOR="1")
    assert forced.returncode == 0, forced.stderr
    assert ESC in forced.stdout
    assert _strip(forced.stdout).startswith("#3  ")
    assert _strip(forced.stdout).rstrip().endswith("Shop/Order/agg-1  v3  E2")
    argv = cli_argv("events", "tail", "-n", "1", "--db", sqlite_db.url)
    assert ESC in _on_a_terminal(argv, NO_COLOR="", FORCE_COLOR="")
    assert ESC not in _on_a_terminal(argv, NO_COLOR="1", FORCE_COLOR="")
    # --json is for machines: never coloured
    json_out = cli("events", "tail", "--json", "--db", sqlite_db.url, FORCE_COLOR="1")
    assert ESC not in json_out.stdout


@pytest.mark.parametrize(
    "env",
    [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}],
    ids=["ascii", "c-locale"],
)
def test_non_ascii_data_on_an_ascii_output(sqlite_db: Backend, env: dict[str, str]) -> None:
    """An output whose encoding lacks a character gets it escaped, not an error."""
    conn = sqlite_db.connect()
    sqlite_db.store.append(conn, ExpectedVersion.any(), [event(data={"größe": "✓"})])
    sqlite_db.store.update_checkpoint(conn, "café", 1)
    conn.commit()
    conn.close()
    for command in (
        ("events", "tail", "--format", "full"),
        ("stream", "show", "Shop", "Order", "agg-1"),
        ("projections", "status"),
    ):
        result = cli_process(*command, "--db", sqlite_db.url, NO_COLOR="1", **env)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert "caf\\xe9" in result.stdout  # the status table


def test_non_ascii_names_typed_in_an_ascii_locale(sqlite_db: Backend) -> None:
    """A terminal sends the names as UTF-8 whatever the locale says; Python
    in an ASCII locale reads those bytes as surrogate escapes. The names
    given to ``stream show`` and the filters are the UTF-8 text typed."""
    conn = sqlite_db.connect()
    sqlite_db.store.append(
        conn,
        ExpectedVersion.any(),
        [event("ö-1", "Plaçed", bounded_context="Sälës", aggregate_type="Ördér")],
    )
    conn.commit()
    conn.close()
    env = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "", "NO_COLOR": "1"}
    show = cli_process("stream", "show", "Sälës", "Ördér", "ö-1", "--db", sqlite_db.url, **env)
    assert show.returncode == 0, show.stderr
    assert "Pla\\xe7ed" in show.stdout
    filters = ("--type", "Plaçed", "--aggregate-type", "Ördér", "--context", "Sälës")
    tail = cli_process("events", "tail", "--json", *filters, "--db", sqlite_db.url, **env)
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 1, tail.stderr
