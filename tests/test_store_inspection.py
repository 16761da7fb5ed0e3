"""What the store tells operators: head, latest events, every checkpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import Backend
from helpers import events
from pupsourcing import ExpectedVersion

pytestmark = pytest.mark.both_apis  # the blocking and the asyncio API, see conftest


def test_head_latest_events_and_checkpoints(backend: Backend) -> None:
    conn = backend.connection()
    store = backend.store
    assert store.head_position(conn) == 0
    assert store.read_latest_events(conn, 5) == []
    assert store.list_checkpoints(conn) == []
    store.append(conn, ExpectedVersion.any(), events(4, "a"))
    store.append(conn, ExpectedVersion.any(), events(3, "b"))
    store.update_checkpoint(conn, "zeta", 7)
    store.update_checkpoint(conn, "alpha_p1", 2)
    conn.commit()

    assert store.head_position(conn) == 7
    latest = store.read_latest_events(conn, 4)
    assert [e.global_position for e in latest] == [4, 5, 6, 7]
    assert [e.aggregate_id for e in latest] == ["a", "b", "b", "b"]
    assert latest == store.read_events(conn, 3, 10)
    assert store.read_latest_events(conn, 0) == []
    assert len(store.read_latest_events(conn, 100)) == 7

    alpha, zeta = store.list_checkpoints(conn)
    conn.rollback()
    assert (alpha.name, alpha.position, zeta.name, zeta.position) == ("alpha_p1", 2, "zeta", 7)
    now = datetime.now(UTC)
    for checkpoint in (alpha, zeta):
        assert checkpoint.updated_at is not None
        assert checkpoint.updated_at.tzinfo is not None
        assert abs(checkpoint.updated_at - now) < timedelta(minutes=1)
        assert checkpoint.age is not None
        assert -5 < checkpoint.age < 60
