"""Small builders shared by the tests."""

from __future__ import annotations

import json
from typing import Any

from pupsourcing import Event


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
