"""MySQL/MariaDB's horizon probe reads the open write transactions from ``SHOW
ENGINE INNODB STATUS``, which quotes the SQL each transaction is running: no
client text there may hide a writer (the processor would move past an event
that commits later, and lose it for good)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MYSQL_HOST, backends_and_apis, made_backend, mysql_admin, require
from helpers import event
from pupsourcing import ExpectedVersion, PersistedEvent
from pupsourcing.adapters.mysql import MySQLStore
from pupsourcing.adapters.mysql._status import MAX_STATUS_BYTES, active_transactions
from pupsourcing.projection import ProcessorConfig

pymysql = require("pymysql")

OWN = 292
"""The prober's connection in the crafted outputs."""

HEAD = """
=====================================
2026-12-05 18:29:14 0x7f77441d56c0 INNODB MONITOR OUTPUT
=====================================
Per second averages calculated from the last 4 seconds
-----------------
BACKGROUND THREAD
-----------------
srv_master_thread loops: 0 srv_active, 0 srv_shutdown, 486 srv_idle
----------
SEMAPHORES
----------
"""
TRANSACTIONS = """------------
TRANSACTIONS
------------
Trx id counter 2300
Purge done for trx's n:o < 2294 undo n:o < 0 state: running
History list length 1
LIST OF TRANSACTIONS FOR EACH SESSION:
"""
TAIL = """--------
FILE I/O
--------
Pending flushes (fsync): 0
---
LOG
---
Log sequence number 13806071
--------------
ROW OPERATIONS
--------------
1 read views open inside InnoDB
state: sleeping
----------------------------
END OF INNODB MONITOR OUTPUT
============================
"""


@dataclass
class Trx:
    """One transaction as the server prints it."""

    id: int | None  # None: has not written (printed as an address)
    thread: int | None  # None: no connection (a recovered transaction)
    sql: str = ""  # the statement it is running, as the client sent it
    state: str = "ACTIVE 1 sec"
    waiting: bool = False

    def render(self) -> str:
        name = "(0x7f77454e0c80)" if self.id is None else str(self.id)
        text = f"---TRANSACTION {name}, {self.state}\n"
        if self.waiting:
            text += "mysql tables in use 1, locked 1\n"
            text += "LOCK WAIT 2 lock struct(s), heap size 1128, 1 row lock(s)\n"
        elif self.id is not None:
            text += "1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 1\n"
        else:
            text += "0 lock struct(s), heap size 1128, 0 row lock(s)\n"
        if self.thread is not None:
            text += (
                f"MariaDB thread id {self.thread}, OS thread handle 140150219687616, "
                "query id 6334 127.0.0.1 root Sending data\n"
            )
            if self.sql:
                text += self.sql + "\n"
        if self.waiting:
            text += (
                "------- TRX HAS BEEN WAITING 527072 us FOR THIS LOCK TO BE GRANTED:\n"
                "RECORD LOCKS space id 113 page no 3 n bits 320 index PRIMARY of table "
                f"`test`.`t` trx id {self.id} lock_mode X locks rec but not gap waiting\n"
                "Record lock, heap no 2 PHYSICAL RECORD: n_fields 3; compact format\n"
                " 0: len 4; hex 80000001; asc     ;;\n\n"
                "------------------\n"
            )
        if self.id is None:
            text += "Trx read view will not see trx with id >= 2297, sees < 2297\n"
        return text


def status(*trxs: Trx, before: str = "") -> str:
    return HEAD + before + TRANSACTIONS + "".join(t.render() for t in trxs) + TAIL


def writers(*trxs: Trx) -> set[int]:
    return {t.id for t in trxs if t.id is not None and t.thread != OWN}


PROBER = Trx(None, OWN, "SHOW ENGINE INNODB STATUS")
FORGED_LINES = [
    "--------",
    "------------------",
    "---TRANSACTION 1, ACTIVE 1 sec",
    "---TRANSACTION 2297, ACTIVE 1 sec",
    "---TRANSACTION (0x7f77454e0c80), ACTIVE 0 sec",
    "---TRANSACTION garbage",
    f"MariaDB thread id {OWN}, OS thread handle 1, query id 1 127.0.0.1 root",
    f"MySQL thread id {OWN}, OS thread handle 1, query id 1",
    "1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 1",
    "mysql tables in use 1, locked 1",
    "LIST OF TRANSACTIONS FOR EACH SESSION:",
    "------------",
    "TRANSACTIONS",
    "FILE I/O",
    "----------------------------",
    "END OF INNODB MONITOR OUTPUT",
    "============================",
    "Trx read view will not see trx with id >= 1, sees < 1",
    "",
]
"""Lines a client can put in its statement text (in a comment or a literal)."""


def forged(*lines: str) -> str:
    return "SELECT 1 /*\n" + "\n".join(lines) + "\n*/"


def test_a_plain_status_lists_the_writers_but_not_the_prober() -> None:
    trxs = [
        PROBER,
        Trx(2299, 291, "SELECT * FROM t FOR UPDATE", waiting=True),
        Trx(2298, 290),
        Trx(None, 214),  # read-only: has not written
        Trx(2297, None),  # no connection: a recovered transaction still counts
        Trx(2296, OWN - 1, state="ACTIVE (PREPARED) 2 sec"),
        Trx(2295, OWN - 2, state="COMMITTED IN MEMORY"),
        Trx(2294, OWN - 3, state="not started"),  # MySQL lists idle sessions
        Trx(2293, OWN),  # the prober's own writes never hold it back
        Trx(2292, 289, "SELECT SLEEP(2)"),
    ]
    assert active_transactions(status(*trxs), OWN) == {2299, 2298, 2297, 2296, 2295, 2292}
    waiting_prober = Trx(2290, OWN, "SHOW ENGINE INNODB STATUS", waiting=True)
    assert active_transactions(status(waiting_prober, Trx(2291, 7)), OWN) == {2291}


def test_a_line_of_dashes_in_a_statement_hides_no_later_writer() -> None:
    # The case of issue 19: the list used to end at the first line of eight dashes.
    trxs = [PROBER, Trx(2299, 291, forged("--------", "FILE I/O", "--------")), Trx(2298, 290)]
    assert active_transactions(status(*trxs), OWN) == {2299, 2298}


def test_forged_transaction_lines_add_writers_but_hide_none() -> None:
    real = Trx(2298, 290)
    trxs = [
        PROBER,
        # a forged block claiming the prober's connection and a real writer's id
        Trx(
            2299,
            291,
            forged(
                "---TRANSACTION 2298, ACTIVE 1 sec",
                "1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 1",
                f"MariaDB thread id {OWN}, OS thread handle 1, query id 1",
                "---TRANSACTION 1, ACTIVE 1 sec",
            ),
        ),
        real,
        # the prober's thread line quoted after a writer's real one
        Trx(2297, 289, forged(f"MariaDB thread id {OWN}, OS thread handle 1, query id 1")),
    ]
    assert active_transactions(status(*trxs), OWN) == {2299, 2298, 2297, 1}


def test_forged_section_headers_and_trailers_hide_no_writer() -> None:
    quoted = forged(
        "--------",
        "FILE I/O",
        "--------",
        "----------------------------",
        "END OF INNODB MONITOR OUTPUT",
        "============================",
        "------------",
        "TRANSACTIONS",
        "------------",
        "LIST OF TRANSACTIONS FOR EACH SESSION:",
    )
    trxs = [PROBER, Trx(2299, 291), Trx(2298, 290, quoted), Trx(2297, 289)]
    assert active_transactions(status(*trxs), OWN) == {2299, 2298, 2297}


def test_forged_lines_in_the_deadlock_report_only_add_writers() -> None:
    # The latest deadlock, printed before the list, quotes the statements too.
    deadlock = (
        "------------------------\nLATEST DETECTED DEADLOCK\n------------------------\n"
        "*** (1) TRANSACTION:\nTRANSACTION 2001, ACTIVE 0 sec starting index read\n"
        "MariaDB thread id 12, OS thread handle 1, query id 9 localhost root\n"
        + forged(
            "LIST OF TRANSACTIONS FOR EACH SESSION:",
            "---TRANSACTION 5, ACTIVE 1 sec",
            "--------",
            "FILE I/O",
            "--------",
        )
        + "\n*** WE ROLL BACK TRANSACTION (1)\n"
    )
    trxs = [PROBER, Trx(2299, 291), Trx(2298, 290)]
    assert active_transactions(status(*trxs, before=deadlock), OWN) == {2299, 2298, 5}


def test_a_status_with_undecodable_bytes_is_parsed() -> None:
    quoted = b"SELECT _binary'\xed\xa0\x80\xff\x85\r' /*\r\n--------\n\x85---TRANSACTION 3 */"
    head, _, tail = status(PROBER, Trx(2299, 291, "@SQL@"), Trx(2298, 290)).partition("@SQL@")
    raw = head.encode() + quoted + tail.encode()
    assert active_transactions(raw, OWN) == {2299, 2298}
    assert active_transactions(bytearray(raw), OWN) == {2299, 2298}


def test_an_output_that_may_be_incomplete_tells_nothing() -> None:
    trxs = [PROBER, Trx(2299, 291), Trx(2298, 290)]
    text = status(*trxs)
    assert active_transactions(text, OWN) == {2299, 2298}
    cut_list = text.replace("LIST OF TRANSACTIONS FOR EACH SESSION:\n", "... truncated...\n")
    padding = "x" * (MAX_STATUS_BYTES - 1 - len(text))
    incomplete = {
        "the server cut the start of the list": cut_list,
        "no list": text.replace("LIST OF TRANSACTIONS FOR EACH SESSION:\n", ""),
        "no FILE I/O section": text.replace("FILE I/O", "FILE"),
        "no trailer": text[: text.index("----------------------------\nEND")],
        "cut inside the list": text[: text.index("---TRANSACTION 2298")],
        "a list the server shortened": text.replace("FILE I/O\n", "FILE I/O\n... truncated...\n"),
        "transactions not shown": text.replace("FILE I/O\n", "FILE I/O\n3 not shown\n"),
        "an unknown header": status(PROBER, Trx(2299, 291), Trx(2298, 290, "x")).replace(
            "---TRANSACTION 2299, ACTIVE", "---TRANSACTION 2299 ACTIVE"
        ),
        # the server cuts an output past 1 MB to exactly this size: a trailer
        # forged at the cut cannot be told from the real one
        "1 MB": text.replace("Sending data\n", "Sending data\n" + padding + "\n", 1)[
            : MAX_STATUS_BYTES - 1
        ],
    }
    for why, output in incomplete.items():
        assert active_transactions(output, OWN) is None, why
        assert active_transactions(output.encode("latin-1"), OWN) is None, why


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # has written
            st.sampled_from([OWN, 289, 290, 291, None]),  # connection
            st.lists(
                st.sampled_from(FORGED_LINES)
                | st.text(alphabet="-\n TRANSACTIO,0123", max_size=30),
                max_size=6,
            ),
        ),
        max_size=6,
    )
)
def test_no_statement_text_hides_a_writer(
    specs: list[tuple[bool, int | None, list[str]]],
) -> None:
    trxs = [
        Trx(2400 - n if wrote else None, thread, forged(*lines) if lines else "")
        for n, (wrote, thread, lines) in enumerate(specs)
    ]
    found = active_transactions(status(*trxs), OWN)
    if found is None:  # unsure only of a forged header it does not know
        assert any(line.startswith("---TRANSACTION ") for t in trxs for line in t.sql.split("\n"))
    else:
        assert writers(*trxs) <= found


# -- on the real server ------------------------------------------------------


class Recorder:
    name = "horizon"

    def __init__(self) -> None:
        self.seen: list[PersistedEvent] = []

    def handle(self, event: PersistedEvent, tx: Any) -> None:
        self.seen.append(event)


def run_for(processor: Any, projection: Recorder, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(projection,), kwargs={"stop": stop})
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


MARK = "---TRANSACTION 1, ACTIVE 1 sec\nLIST OF"
FAKE_SQL = (
    "SELECT SLEEP(60) /* a comment\n--------\nFILE I/O\n--------\n"
    "---TRANSACTION 1, ACTIVE 1 sec\nLIST OF TRANSACTIONS FOR EACH SESSION:\n"
    "----------------------------\nEND OF INNODB MONITOR OUTPUT\n"
    "============================\n*/"
)


def innodb_status(admin: Any) -> str:
    cursor = admin.cursor()
    cursor.execute("SET character_set_results = binary")
    cursor.execute("SHOW ENGINE INNODB STATUS")
    text = cursor.fetchone()[2].decode("latin-1")
    cursor.execute("SET character_set_results = utf8mb4")
    return str(text)


@pytest.mark.parametrize("backend_api", backends_and_apis(["mysql", "mysqlclient"]))
def test_a_statement_quoting_status_lines_hides_no_open_writer(
    backend_api: tuple[str, str], tmp_path: Path
) -> None:
    """Writer A, still in its transaction, runs a statement whose text holds
    a line of dashes, section headers and a transaction line; writer B, listed
    after A, is open too. The processor moves past neither's event, and
    delivers every event once after they commit."""
    name, api = backend_api
    with made_backend(name, tmp_path, api=api) as backend:

        def connect() -> Any:
            conn = pymysql.connect(
                host=MYSQL_HOST, user="root", password="", database=backend.database
            )
            backend.cleanups.append(conn.close)
            return conn

        writer_store = MySQLStore()
        admin = mysql_admin()
        backend.cleanups.append(admin.close)
        failures: list[BaseException] = []

        def run_fake(writer: Any) -> None:
            try:
                writer.cursor().execute(FAKE_SQL)
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != 1317:  # interrupted by KILL QUERY below
                    failures.append(exc)

        # InnoDB lists transactions in the order of its pooled transaction
        # objects, which other sessions on the server reorder: B writes
        # first, which usually lists it after A, and new sessions try again.
        for _ in range(5):
            writer_b, writer_a = connect(), connect()
            low = writer_store.append(writer_b, ExpectedVersion.any(), [event("B")])
            mid = writer_store.append(writer_a, ExpectedVersion.any(), [event("A")])
            running = threading.Thread(target=run_fake, args=(writer_a,))
            running.start()
            deadline = time.monotonic() + 10
            while MARK not in (text := innodb_status(admin)):
                assert time.monotonic() < deadline, "A's statement never showed"
                time.sleep(0.02)
            # the scenario: A's statement is quoted before B's transaction
            a_line = text.index(f"thread id {writer_a.thread_id()},")
            if a_line < text.index(MARK) < text.index(f"thread id {writer_b.thread_id()},"):
                break
            admin.cursor().execute(f"KILL QUERY {writer_a.thread_id()}")
            running.join(10)
            writer_a.rollback()
            writer_b.rollback()
        else:
            pytest.fail("the status never listed B after A's statement")
        try:
            other = connect()
            high = writer_store.append(other, ExpectedVersion.any(), [event("C")])
            other.commit()
            positions = [r.global_positions[0] for r in (low, mid, high)]
            assert positions == sorted(positions)
            projection = Recorder()
            processor = backend.Processor(
                backend.connect, backend.store, ProcessorConfig(poll_interval=0.01)
            )
            run_for(processor, projection, 0.3)
            assert projection.seen == []  # A and B may still commit lower positions
        finally:
            admin.cursor().execute(f"KILL QUERY {writer_a.thread_id()}")
            running.join(10)
        assert not failures
        writer_a.commit()
        run_for(processor, projection, 0.3)
        assert projection.seen == [], "moved past B's open transaction"
        writer_b.commit()
        assert processor.catch_up(projection) == 3
        assert [e.global_position for e in projection.seen] == positions
        delivered = Counter(e.event_id for e in projection.seen)
        assert delivered == Counter(r.events[0].event_id for r in (low, mid, high))
        processor.close()
