"""Hostile input never corrupts the store or crashes it, on every database.

Every event field is fuzzed (hypothesis): huge and empty strings, NUL, lone
surrogates, control characters, SQL metacharacters, wrong types, naive and
far-off datetimes, non-JSON metadata. Each append either round-trips exactly
or is rejected with :class:`InvalidEventError` / ``ValueError``; a rejected
append leaves the database unchanged even when the caller commits after it,
and the connection stays usable. Large values (10 MB payloads and metadata)
and hostile table names are covered by example.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import (
    BACKENDS,
    STORE_PROPERTIES,
    Backend,
    close_backend,
    make_backend,
    private_backend,
)
from pupsourcing import Event, ExpectedVersion, InvalidEventError, PersistedEvent
from pupsourcing.projection import Processor
from pupsourcing.store import StoreConfig

METACHARACTERS = [
    "'",
    '"',
    "`",
    "\\",
    ";",
    "--",
    "/*",
    "*/",
    "%",
    "%s",
    "%%",
    "%(name)s",
    "?",
    "$1",
    ":name",
    "{}",
    "{0}",
    "\x1a",
    "\r\n",
    "\t",
    "\x7f",
    "\x1b[31m",
    "\u2028",
    "\ufeff",
    "\u200b",
    "😀",
    "é",
    "e\u0301",
    "NULL",
    "'; DROP TABLE events; --",
    "' OR '1'='1",
    "\\'; SELECT 1; --",
    "`; DROP TABLE events; --",
    '"); DELETE FROM aggregate_heads; --',
]
REFUSED_EVERYWHERE = ["\x00", "a\x00b", "\ud800", "x\udfff", "\udbff\udc00"]
"""NUL and lone surrogates: no database stores them as text."""

LONG_TEXTS = ["x" * 255, "é" * 255, "😀" * 255, "x" * 256, "'" * 3000, "x" * 100_000]

pieces = st.one_of(
    st.sampled_from(METACHARACTERS),
    st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf"]), max_size=6),
)
hostile_text = st.one_of(
    st.lists(pieces, min_size=1, max_size=6).map("".join),
    st.sampled_from(REFUSED_EVERYWHERE + LONG_TEXTS + ["", " ", "a "]),
    st.text(st.characters(categories=["Cs", "Cc", "Co", "Cn"]), min_size=1, max_size=4),
)
wrong_types = st.sampled_from([None, 0, 1.5, b"bytes", bytearray(b"x"), ["x"], {"a": 1}, True])
plain_text = st.sampled_from(["Shop", "Order", "o-1", "Placed", "c-1"])


def text_field(required: bool) -> st.SearchStrategy[Any]:
    normal = plain_text if required else st.one_of(st.none(), plain_text)
    return st.one_of(normal, normal, hostile_text, wrong_types)


hostile_payload = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 100, bytes(range(256)), b"'\\\x00\x1a\"" * 50]),
    st.text(max_size=5),  # str, not bytes
    wrong_types,
)
hostile_metadata = st.one_of(
    st.sampled_from(
        [
            None,
            b"{}",
            b"",
            b"not json",
            b"{",
            b'{"a": NaN}',
            b'{"a": Infinity}',
            b"\xff\xfe",
            b"\x00",
            b'{"a": "\\u0000"}',
            b'{"a": "\\ud800"}',
            b'{"\'; DROP TABLE events; --": "`"}',
            b"[" * 40 + b"]" * 40,
            b"1e999999",
            b'"just a string"',
            b'  {"spaced" :  1 }  ',
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3)
        ),
        max_leaves=6,
    ).map(lambda value: json.dumps(value).encode("utf-8", "surrogatepass")),
    st.text(max_size=5),
    wrong_types,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12, minutes=30))]
)
hostile_created_at = st.one_of(
    st.datetimes(timezones=zones),
    st.datetimes(),  # naive
    st.sampled_from([datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)]),
    wrong_types,
)
hostile_version = st.one_of(
    st.integers(-2, 3), st.sampled_from([2**31 - 1, 2**31, 2**63, True, "1", 1.0, None])
)
hostile_event_id = st.one_of(st.uuids(), st.sampled_from([str(uuid.uuid4()), None, 1, b"x" * 16]))


def unchecked_event(*args: Any, payload: Any, metadata: Any, **options: Any) -> Event:
    """An Event holding any payload and metadata: the constructor refuses
    ones of the wrong type itself, but append must catch them too."""
    built = Event(*args, b"", metadata=None, **options)
    object.__setattr__(built, "payload", payload)
    object.__setattr__(built, "metadata", metadata)
    return built


hostile_events = st.builds(
    unchecked_event,
    text_field(True),
    text_field(True),
    text_field(True),
    text_field(True),
    payload=hostile_payload,
    event_version=st.one_of(st.just(1), hostile_version),
    event_id=st.one_of(st.uuids(), hostile_event_id),
    metadata=hostile_metadata,
    causation_id=text_field(False),
    correlation_id=text_field(False),
    trace_id=text_field(False),
    created_at=st.one_of(
        st.just(datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)), hostile_created_at
    ),
)


def core_invalid(e: Event) -> bool:
    """Refused by the rules every store shares (API.md: InvalidEventError)."""
    required = (e.bounded_context, e.aggregate_type, e.aggregate_id, e.event_type)
    optional = (e.causation_id, e.correlation_id, e.trace_id)
    texts = [t for t in (*required, *optional) if t is not None]
    if any(not isinstance(t, str) for t in texts) or not all(required):
        return True
    if any("\x00" in t or any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in texts):
        return True
    if not isinstance(e.payload, bytes):
        return True
    if e.metadata is not None and e.metadata != b"{}":
        if not isinstance(e.metadata, bytes):
            return True
        try:
            json.loads(e.metadata.decode("utf-8"), parse_constant=_refuse)
        except (ValueError, RecursionError):
            return True
    version = e.event_version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return True
    if not isinstance(e.event_id, uuid.UUID):
        return True
    return not isinstance(e.created_at, datetime) or e.created_at.utcoffset() is None


def _refuse(name: str) -> None:
    raise ValueError(name)


def same_event(stored: PersistedEvent, given_event: Event) -> bool:
    fields = [f.name for f in dataclasses.fields(Event)]
    return all(getattr(stored, name) == getattr(given_event, name) for name in fields)


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend(request.param, tmp_path)
    yield backend
    close_backend(backend)


def attempt(backend: Backend, conn: Any, batch: list[Event]) -> None:
    """Append ``batch`` and commit; check it round-trips, or that a rejection
    changed nothing (even though the caller commits after it)."""
    before = backend.snapshot()
    rejection: ValueError | None = None
    try:
        result = backend.store.append(conn, ExpectedVersion.any(), batch)
    except ValueError as exc:  # InvalidEventError is a ValueError
        rejection = exc
    if rejection is not None:
        conn.commit()
        assert backend.snapshot() == before, rejection
        if isinstance(rejection, InvalidEventError):
            assert 0 <= rejection.index < len(batch)
            assert rejection.field in {f.name for f in dataclasses.fields(Event)} | {"event"}
        return
    conn.commit()
    assert not any(core_invalid(e) for e in batch), batch
    first = batch[0]
    stream = backend.store.read_aggregate_stream(
        conn, first.bounded_context, first.aggregate_type, first.aggregate_id
    )
    conn.commit()
    stored = list(stream)[-len(batch) :]
    assert len(stored) == len(batch)
    for stored_event, given_event in zip(stored, batch, strict=True):
        assert same_event(stored_event, given_event), (stored_event, given_event)
    assert [e.global_position for e in stored] == list(result.global_positions)
    events_before, _ = before
    events_after, _ = backend.snapshot()
    assert events_after[0] == events_before[0] + len(batch)


@STORE_PROPERTIES
@given(hostile=hostile_events, valid_first=st.booleans())
def test_any_event_round_trips_or_is_rejected_without_a_trace(
    store_backend: Backend, hostile: Event, valid_first: bool
) -> None:
    if isinstance(hostile.event_id, uuid.UUID):  # examples share one store: ids must differ
        object.__setattr__(hostile, "event_id", uuid.uuid4())  # replace() would check payload
    batch = [hostile]
    if valid_first and isinstance(hostile.bounded_context, str):
        # A valid event of the same aggregate first: all or nothing.
        valid = dataclasses.replace(
            hostile,
            event_type="Valid",
            payload=b"{}",
            metadata=b"{}",
            event_version=1,
            event_id=uuid.uuid4(),
            causation_id=None,
            correlation_id=None,
            trace_id=None,
            created_at=datetime.now(UTC),
        )
        batch.insert(0, valid)
    conn = store_backend.connect()
    try:
        if core_invalid(hostile):
            with pytest.raises(InvalidEventError) as refused:
                store_backend.store.append(conn, ExpectedVersion.any(), batch)
            assert refused.value.index == len(batch) - 1 or core_invalid(batch[0])
        attempt(store_backend, conn, batch)
        cursor = conn.cursor()
        cursor.execute("SELECT 1")  # the connection is still usable
        assert cursor.fetchone()[0] == 1
        cursor.close()
    finally:
        conn.rollback()
        conn.close()


def test_sql_metacharacters_in_every_text_field_round_trip(store_backend: Backend) -> None:
    conn = store_backend.connection()
    for text in METACHARACTERS:
        value = f"x{text}x"  # no trailing space (MySQL keys refuse one)
        event = Event(
            value,
            value,
            value,
            value,
            text.encode(),
            causation_id=value,
            correlation_id=value,
            trace_id=value,
            metadata=json.dumps({value: value}).encode(),
        )
        attempt(store_backend, conn, [event])
    assert store_backend.snapshot()[0][0] == len(METACHARACTERS)


TEN_MB = 10 * 1024 * 1024


def big_event(payload: bytes, metadata: bytes = b"{}") -> Event:
    return Event("Files", "Blob", str(uuid.uuid4()), "Uploaded", payload, metadata=metadata)


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
def test_ten_megabytes_round_trip(name: str, tmp_path: Path) -> None:
    backend = make_backend(name, tmp_path)
    try:
        conn = backend.connection()
        payload = uuid.uuid4().bytes * (TEN_MB // 16)
        metadata = json.dumps({"blob": "é'\"\\" * (TEN_MB // 6)}).encode()
        attempt(backend, conn, [big_event(payload, metadata)])
    finally:
        close_backend(backend)


def widen_payload(backend: Backend) -> None:
    conn = backend.connect()
    conn.cursor().execute("ALTER TABLE events MODIFY payload LONGBLOB NOT NULL")
    conn.commit()
    conn.close()


def max_allowed_packet(backend: Backend) -> int:
    return int(backend.scalar("SELECT @@max_allowed_packet"))


def test_ten_megabytes_on_mysql_blob_are_rejected(tmp_path: Path) -> None:
    """The Go schema's payload column is a BLOB (64 KB): rejected before
    anything is sent, nothing written."""
    backend = make_backend("mysql", tmp_path)
    try:
        conn = backend.connection()
        before = backend.snapshot()
        with pytest.raises(InvalidEventError, match="LONGBLOB") as refused:
            backend.store.append(conn, ExpectedVersion.any(), [big_event(b"\xab" * TEN_MB)])
        assert refused.value.field == "payload"
        conn.commit()
        assert backend.snapshot() == before
    finally:
        close_backend(backend)


def test_ten_megabytes_on_mysql_longblob_need_a_large_enough_packet(tmp_path: Path) -> None:
    """On the shared server (16 MB max_allowed_packet) a 10 MB payload cannot
    be sent even into a LONGBLOB (PyMySQL sends binary data as hex): it is
    rejected up front, naming max_allowed_packet, and the connection lives."""
    backend = make_backend("mysql", tmp_path)
    try:
        widen_payload(backend)
        packet = max_allowed_packet(backend)
        if packet >= 2 * TEN_MB + 64 * 1024:  # pragma: no cover - a server configured larger
            pytest.skip(f"max_allowed_packet is {packet}: large enough for 10 MB")
        conn = backend.connection()
        before = backend.snapshot()
        with pytest.raises(InvalidEventError, match="max_allowed_packet"):
            backend.store.append(conn, ExpectedVersion.any(), [big_event(b"\xab" * TEN_MB)])
        conn.commit()
        assert backend.snapshot() == before
        attempt(backend, conn, [big_event(b"\xab" * (TEN_MB // 4))])  # still usable
    finally:
        close_backend(backend)


def test_ten_megabytes_round_trip_on_mysql_longblob(private_mariadb: Any) -> None:
    """With a LONGBLOB payload column and a 64 MB max_allowed_packet (the
    private server's), 10 MB payloads and metadata round-trip exactly."""
    backend = private_backend(private_mariadb)
    try:
        widen_payload(backend)
        assert max_allowed_packet(backend) == 64 * 1024 * 1024
        conn = backend.connection()
        payload = uuid.uuid4().bytes * (TEN_MB // 16)
        metadata = json.dumps({"blob": "é'\"\\" * (TEN_MB // 6)}).encode()
        attempt(backend, conn, [big_event(payload, metadata)])
        # Read back through a projection too (rows of 10 MB in a batch).
        seen: list[int] = []

        class Sizes:
            name = "sizes"

            def handle(self, event: PersistedEvent, tx: Any) -> None:
                seen.append(len(event.payload))

        with Processor(backend.connect, backend.store) as processor:
            assert processor.catch_up(Sizes()) == 1
        assert seen == [len(payload)]
    finally:
        close_backend(backend)


# -- table names ---------------------------------------------------------------

identifier_like = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from([*METACHARACTERS, "events", "a", "_", "1", " ", "."]), max_size=4).map(
        "".join
    ),
)


@STORE_PROPERTIES
@given(name=identifier_like)
def test_store_config_accepts_only_plain_identifiers(name: str) -> None:
    try:
        config = StoreConfig(events_table=name)
    except ValueError:
        return
    assert config.events_table == name
    assert name
    assert len(name) <= 47
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in name)
    assert not name[0].isdigit()


@pytest.mark.parametrize(
    "names", [("select", "order", "group"), ("user", "table", "where"), ("_", "__", "events_")]
)
def test_reserved_words_as_table_names_work_everywhere(
    store_backend: Backend, tmp_path: Path, names: tuple[str, str, str]
) -> None:
    config = StoreConfig(
        events_table=names[0], checkpoints_table=names[1], aggregate_heads_table=names[2]
    )
    backend = make_backend(store_backend.name, tmp_path / "reserved", config)
    try:
        store = backend.store
        conn = backend.connection()
        store.append(conn, ExpectedVersion.no_stream(), [Event("C", "T", "a", "E", b"1")])
        store.append(conn, ExpectedVersion.exact(1), [Event("C", "T", "a", "E", b"2")])
        conn.commit()
        assert [e.payload for e in store.read_aggregate_stream(conn, "C", "T", "a")] == [
            b"1",
            b"2",
        ]
        conn.commit()  # a new snapshot (MySQL's REPEATABLE READ) below
        seen: list[int] = []

        class Seen:
            name = "seen"

            def handle(self, event: PersistedEvent, tx: Any) -> None:
                seen.append(event.global_position)

        with Processor(backend.connect, store) as processor:
            assert processor.catch_up(Seen()) == 2
        assert store.get_checkpoint(conn, "seen") == seen[-1]
        conn.commit()
    finally:
        close_backend(backend)


# -- the other methods' arguments ----------------------------------------------

hostile_int = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -1, 0]),
    wrong_types,
)
hostile_name = st.one_of(hostile_text, wrong_types)


@STORE_PROPERTIES
@given(
    method=st.sampled_from(
        [
            "read_events",
            "read_latest_events",
            "read_aggregate_stream",
            "get_checkpoint",
            "update_checkpoint",
        ]
    ),
    ints=st.tuples(hostile_int, hostile_int),
    names=st.tuples(hostile_name, hostile_name),
)
def test_read_and_checkpoint_arguments_are_checked_before_the_driver_sees_them(
    store_backend: Backend, method: str, ints: tuple[Any, Any], names: tuple[Any, Any]
) -> None:
    """Whatever the arguments: a result, or TypeError/ValueError raised by the
    store's own checks (never a driver's overflow, encoding or SQL syntax
    error), and the connection stays usable."""
    store = store_backend.store
    conn = store_backend.connect()
    calls = {
        "read_events": lambda: store.read_events(conn, *ints),
        "read_latest_events": lambda: store.read_latest_events(conn, ints[0]),
        "read_aggregate_stream": lambda: store.read_aggregate_stream(
            conn, names[0], "Order", names[1], *ints
        ),
        "get_checkpoint": lambda: store.get_checkpoint(conn, names[0]),
        "update_checkpoint": lambda: store.update_checkpoint(conn, names[0], ints[0]),
    }
    try:
        try:
            calls[method]()
        except (TypeError, ValueError) as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            assert "pupsourcing" in frames[-1].filename, frames[-1]  # raised by the store
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1
        cursor.close()
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.parametrize("version", [2**63, 2**64])
def test_an_exact_version_no_store_can_hold_is_refused(version: int) -> None:
    with pytest.raises(ValueError, match="at most"):
        ExpectedVersion.exact(version)
    assert ExpectedVersion.exact(2**63 - 1).value == 2**63 - 1
