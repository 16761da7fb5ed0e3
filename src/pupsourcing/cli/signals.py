"""SIGINT and SIGTERM for long-running commands: the first asks to stop
after the current batch, a second one stops at once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

logger = logging.getLogger("pupsourcing.cli")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_now(signum: int) -> None:
    """Leave at once with ``128 + signum``; open transactions roll back when
    their connections drop."""
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    what: str = "stopping after the current batch",
    on_second: Callable[[int], None] | None = exit_now,
) -> Iterator[None]:
    """While inside, the first SIGINT/SIGTERM sets ``stop``; the next one
    calls ``on_second`` with its number (``None``: it changes nothing).
    Only signals count: ``stop`` set otherwise (a supervisor giving up on a
    crashing worker) leaves the next signal a first one."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) > 1:
            if on_second is None:
                logger.info("%s again: already %s", name, what)
                return
            logger.warning("%s again: stopping now", name)
            on_second(signum)
            return
        again = "" if on_second is None else " (send it again to stop at once)"
        logger.warning("%s: %s%s", name, what, again)
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
