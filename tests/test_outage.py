"""Throttled outage logging (:class:`pupsourcing._outage.Outage`), on a
clock the tests move: no database, no sleeps."""

from __future__ import annotations

import logging
import math

from pupsourcing._outage import Outage

WARNING, DEBUG = logging.WARNING, logging.DEBUG


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_warning_at_the_start_then_debug_then_a_warning_every_interval() -> None:
    clock = Clock()
    outage = Outage(60.0, clock)
    levels = []
    for _ in range(8):  # a failure every 20 s
        levels.append(outage.failed())
        clock.now += 20.0
    # 0 s, 20, 40, 60 (60 s since the warning), 80, 100, 120 (60 again), 140
    assert levels == [WARNING, DEBUG, DEBUG, WARNING, DEBUG, DEBUG, WARNING, DEBUG]
    assert outage.failures == 8
    assert outage.lasted == 140.0


def test_the_interval_counts_from_the_last_warning_not_the_start() -> None:
    clock = Clock()
    outage = Outage(60.0, clock)
    assert outage.failed() == WARNING
    clock.now += 70.0
    assert outage.failed() == WARNING  # 70 s after the first
    clock.now += 59.0
    assert outage.failed() == DEBUG  # 129 s after the start, 59 s after the last warning
    clock.now += 1.0
    assert outage.failed() == WARNING


def test_ended_says_how_long_the_outage_lasted_once() -> None:
    clock = Clock()
    outage = Outage(60.0, clock)
    assert outage.ended() is None  # nothing failed: no line
    outage.failed()
    clock.now += 5.0
    outage.failed()
    assert outage.lasted == 5.0
    clock.now += 2.5
    assert outage.ended() == 7.5  # from the first failure to now
    assert outage.failures == 0
    assert outage.ended() is None  # only once


def test_the_next_outage_starts_afresh() -> None:
    clock = Clock()
    outage = Outage(60.0, clock)
    outage.failed()
    clock.now += 30.0
    outage.ended()
    clock.now += 10.0  # 40 s after the last warning
    assert outage.failed() == WARNING
    assert (outage.failures, outage.lasted) == (1, 0.0)
    clock.now += 3.0
    assert outage.failed() == DEBUG
    assert outage.ended() == 3.0


def test_infinity_warns_once_per_outage() -> None:
    clock = Clock()
    outage = Outage(math.inf, clock)
    levels = []
    for _ in range(3):
        levels.append(outage.failed())
        clock.now += 1e9
    assert levels == [WARNING, DEBUG, DEBUG]
    outage.ended()
    assert outage.failed() == WARNING
