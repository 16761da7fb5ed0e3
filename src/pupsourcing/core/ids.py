"""Time-ordered event ids.

Every store keeps a unique index on ``event_id`` (the Go library's schema).
Random ids (:func:`uuid.uuid4`, the default) land on a random page of that
index, so once the index outgrows memory, and after every checkpoint on
PostgreSQL (a full-page image in the WAL for each first change to a page),
each append writes more. Ids that grow with time always land on the last
page, and the cost of an append stays flat however large the store gets.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["uuid7"]

_COUNTER_BITS = 42
_lock = threading.Lock()
_last_ms = -1
_counter = 0


def _next_counter() -> tuple[int, int]:
    """The millisecond and the counter of the next id: a new millisecond
    starts the counter at a random value with its top bit clear (room to
    count up), the same one increments it, and an exhausted counter (or a
    clock that went back) borrows the next millisecond."""
    global _last_ms, _counter
    now = time.time_ns() // 1_000_000
    with _lock:
        if now > _last_ms:
            _last_ms = now
            _counter = int.from_bytes(os.urandom(6), "big") >> (48 - _COUNTER_BITS + 1)
        else:
            _counter += 1
            if _counter >> _COUNTER_BITS:
                _last_ms += 1
                _counter = 0
        return _last_ms, _counter


def uuid7() -> uuid.UUID:
    """A version 7 UUID (RFC 9562): 48 bits of Unix time in milliseconds, a
    42-bit counter, then 32 random bits. Ids made by one process increase
    strictly; ids made elsewhere in the same millisecond interleave.

    Pass it as ``Event(..., event_id=uuid7())`` on stores that will grow
    large: appends then stay as fast on millions of events as on thousands
    (see the module documentation). The ids stay unique and unguessable
    enough for an event id, but they reveal when they were made.
    """
    ms, counter = _next_counter()
    tail = int.from_bytes(os.urandom(4), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | tail
    )
    return uuid.UUID(int=value)
