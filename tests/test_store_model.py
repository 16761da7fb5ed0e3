"""The store against a simple in-memory model, on every real database.

A hypothesis state machine appends random batches with random expected
versions to a handful of aggregates (same ids under other types and
contexts), commits or rolls back, appends twice in one transaction with a
conflict in between, and reuses event ids. After every step the database must
match the model: each stream's events and versions, the global order, ever
increasing positions, and conflicts exactly where the model predicts them.

The number of examples comes from the hypothesis profile
(``PUPSOURCING_HYPOTHESIS``, see ``conftest.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import BACKENDS, STORE_PROPERTIES, Backend, close_backend, make_backend
from pupsourcing import Event, ExpectedVersion, OptimisticConcurrencyError

Key = tuple[str, str, str]
KEYS: list[Key] = [
    ("Shop", "Order", "o-1"),
    ("Shop", "Order", "o-2"),
    ("Shop", "Cart", "o-1"),  # the same id under another type
    ("Billing", "Order", "o-1"),  # and in another context
    ("Shop", "Order", "O-1"),  # differs from o-1 only in case
]

keys = st.sampled_from(KEYS)
expectations = st.sampled_from(["any", "no_stream", "exact"])
offsets = st.sampled_from([-1, 0, 0, 1])  # exact(current + offset): mostly right
counts = st.integers(1, 4)
payloads = st.binary(max_size=40)
metadata = st.sampled_from([None, b"{}", b'{"user": "u-1"}', b"[1, 2.5, null]"])


@dataclass
class Model:
    """What the store must hold: every stream, and every event in commit order."""

    streams: dict[Key, list[Event]] = field(default_factory=lambda: {k: [] for k in KEYS})
    log: list[Event] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def version(self, key: Key) -> int:
        return len(self.streams[key])

    def conflicts(self, key: Key, expected: ExpectedVersion) -> bool:
        if expected.is_any:
            return False
        return self.version(key) != expected.value

    def commit(self, appended: list[tuple[Key, list[Event], tuple[int, ...]]]) -> None:
        for key, batch, positions in appended:
            self.streams[key] += batch
            self.log += batch
            self.positions += positions


def make_events(draw_payloads: list[bytes], key: Key, meta: bytes | None) -> list[Event]:
    return [
        Event(*key, f"Happened{n}", payload, metadata=meta)
        for n, payload in enumerate(draw_payloads)
    ]


def expectation(kind: str, current: int, offset: int) -> ExpectedVersion:
    if kind == "any":
        return ExpectedVersion.any()
    if kind == "no_stream":
        return ExpectedVersion.no_stream()
    return ExpectedVersion.exact(max(0, current + offset))


class StoreMachine(RuleBasedStateMachine):
    backend: Backend  # set on the subclass each test makes

    @initialize()
    def empty_store(self) -> None:
        self.conn: Any = self.backend.connect()
        cursor = self.conn.cursor()
        for table in ("events", "aggregate_heads"):
            cursor.execute(f"DELETE FROM {table}")
        cursor.close()
        self.conn.commit()
        self.model = Model()
        self.pending: list[tuple[Key, list[Event], tuple[int, ...]]] = []
        """Appends of the open transaction, not yet in the model."""
        rows = self.backend.store.read_latest_events(self.conn, 1)
        assert rows == []
        self.conn.rollback()

    def teardown(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.rollback()
            conn.close()

    # -- one append ---------------------------------------------------------------

    def append(
        self, key: Key, expected: ExpectedVersion, batch: list[Event]
    ) -> tuple[Key, list[Event], tuple[int, ...]] | None:
        """Append in the open transaction; check the outcome against the model
        (which already includes this transaction's earlier appends via
        ``pending``); ``None`` on a predicted conflict."""
        current = self.pending_version(key)
        store = self.backend.store
        if (expected.is_exact and current != expected.value) or (
            expected.is_no_stream and current != 0
        ):
            with pytest.raises(OptimisticConcurrencyError) as conflict:
                store.append(self.conn, expected, batch)
            error = conflict.value
            assert (error.bounded_context, error.aggregate_type, error.aggregate_id) == key
            assert error.expected == expected
            assert error.actual in (None, current)
            return None
        result = store.append(self.conn, expected, batch)
        assert result.from_version == current
        assert result.to_version == current + len(batch)
        assert [e.aggregate_version for e in result.events] == list(
            range(current + 1, current + len(batch) + 1)
        )
        assert [e.event_id for e in result.events] == [e.event_id for e in batch]
        positions = result.global_positions
        assert list(positions) == sorted(set(positions))
        assert positions[0] > self.high_position()
        return key, batch, positions

    def pending_version(self, key: Key) -> int:
        return self.model.version(key) + sum(len(batch) for k, batch, _ in self.pending if k == key)

    def high_position(self) -> int:
        """Positions must exceed every committed one (and this transaction's)."""
        mine = [p for _, _, positions in self.pending for p in positions]
        return max([0, *self.model.positions, *mine])

    # -- rules --------------------------------------------------------------------

    @rule(
        key=keys,
        kind=expectations,
        offset=offsets,
        payloads=st.lists(payloads, min_size=1, max_size=4),
        meta=metadata,
        commit=st.booleans(),
    )
    def append_one_batch(
        self,
        key: Key,
        kind: str,
        offset: int,
        payloads: list[bytes],
        meta: bytes | None,
        commit: bool,
    ) -> None:
        self.pending = []
        expected = expectation(kind, self.model.version(key), offset)
        appended = self.append(key, expected, make_events(payloads, key, meta))
        if appended is not None and commit:
            self.conn.commit()
            self.model.commit([appended])
        else:
            self.conn.rollback()

    @rule(
        first=keys,
        second=keys,
        kind=expectations,
        offset=offsets,
        payloads=st.lists(payloads, min_size=1, max_size=3),
    )
    def two_appends_in_one_transaction(
        self, first: Key, second: Key, kind: str, offset: int, payloads: list[bytes]
    ) -> None:
        """A conflict in the second append leaves the first one's events for
        the caller to commit."""
        self.pending = []
        appended = self.append(first, ExpectedVersion.any(), make_events(payloads, first, None))
        assert appended is not None
        self.pending.append(appended)
        expected = expectation(kind, self.pending_version(second), offset)
        again = self.append(second, expected, make_events(payloads[::-1], second, b"{}"))
        if again is not None:
            self.pending.append(again)
        self.conn.commit()
        self.model.commit(self.pending)
        self.pending = []

    @precondition(lambda self: bool(self.model.log))
    @rule(key=keys, pick=st.integers(0, 10**6), kind=expectations)
    def reuse_an_event_id(self, key: Key, pick: int, kind: str) -> None:
        """An event id already stored is refused as a conflict, whatever the
        expected version, and nothing of the append is stored."""
        self.pending = []
        taken = self.model.log[pick % len(self.model.log)].event_id
        batch = [
            Event(*key, "Fresh", b"1"),
            Event(*key, "Reused", b"2", event_id=taken),
        ]
        expected = expectation(kind, self.model.version(key), 0)
        with pytest.raises(OptimisticConcurrencyError):
            self.backend.store.append(self.conn, expected, batch)
        self.conn.rollback()

    @rule(start=st.integers(0, 40), limit=st.integers(0, 8))
    def read_a_page(self, start: int, limit: int) -> None:
        after = self.model.positions[start - 1] if 0 < start <= len(self.model.positions) else 0
        if start > len(self.model.positions):
            after = self.model.positions[-1] if self.model.positions else 0
        page = self.backend.store.read_events(self.conn, after, limit)
        self.conn.rollback()
        index = self.model.positions.index(after) + 1 if after in self.model.positions else 0
        expected = self.model.log[index : index + limit]
        assert [e.event_id for e in page] == [e.event_id for e in expected]

    # -- after every step ---------------------------------------------------------

    @invariant()
    def store_matches_the_model(self) -> None:
        store, conn = self.backend.store, self.conn
        everything = store.read_events(conn, 0, 10_000)
        assert [e.event_id for e in everything] == [e.event_id for e in self.model.log]
        assert [e.global_position for e in everything] == self.model.positions
        assert all(a < b for a, b in itertools.pairwise(self.model.positions))
        for key in KEYS:
            stream = store.read_aggregate_stream(conn, *key)
            model = self.model.streams[key]
            assert stream.version == len(model)
            assert [e.aggregate_version for e in stream] == list(range(1, len(model) + 1))
            assert [(e.event_id, e.event_type, e.payload, e.metadata) for e in stream] == [
                (e.event_id, e.event_type, e.payload, e.metadata) for e in model
            ]
            assert all((e.bounded_context, e.aggregate_type, e.aggregate_id) == key for e in stream)
        conn.rollback()


@pytest.mark.parametrize("name", BACKENDS)
def test_store_behaves_like_the_model(name: str, tmp_path: Path) -> None:
    backend = make_backend(name, tmp_path)
    try:
        machine = type(f"StoreMachine_{name}", (StoreMachine,), {"backend": backend})
        run_state_machine_as_test(machine, settings=STORE_PROPERTIES)
    finally:
        close_backend(backend)


def test_the_model_catches_a_wrong_store(tmp_path: Path) -> None:
    """The machine is not vacuous: a store that drops every other event fails it."""
    backend = make_backend("sqlite", tmp_path)
    real_append = backend.store.append

    def lossy(tx: Any, expected: ExpectedVersion, events: Any) -> Any:
        result = real_append(tx, expected, events)
        if len(events) >= 3:  # loses the last event of larger batches
            tx.execute("DELETE FROM events WHERE event_id = ?", (str(events[-1].event_id),))
        return result

    backend.store.append = lossy  # type: ignore[method-assign]
    try:
        machine = type("LossyMachine", (StoreMachine,), {"backend": backend})
        # Finding a failing example is the point; shrinking it (the better
        # part of the run) would only make the report shorter.
        unshrunk = settings(STORE_PROPERTIES, phases=[p for p in Phase if p != Phase.shrink])
        with pytest.raises(AssertionError):
            run_state_machine_as_test(machine, settings=unshrunk)
    finally:
        close_backend(backend)
